//go:build !linux

package auditsock

import "net"

// peerCred has no kernel-reported peer elsewhere: the socket's server is
// part of the node daemon, which runs only on Linux, so a server built here
// refuses every request. The client side (Dial) works everywhere.
func peerCred(*net.UnixConn) (Peer, bool) { return Peer{}, false }
