// Command age-plugin-cktest is a test-only age plugin for crypto/envelope.
// Its recipient data is an X25519 recipient string ("age1…"), its identity
// data an X25519 identity string, so files it writes are plain X25519
// stanzas. Recipient data starting with "var:" adds a stanza argument of
// random length, to exercise non-deterministic stanza sizes.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"math/big"
	"os"
	"strings"

	"filippo.io/age"
	"filippo.io/age/plugin"
)

type varRecipient struct{ r age.Recipient }

func (v varRecipient) Wrap(key []byte) ([]*age.Stanza, error) {
	s, err := v.r.Wrap(key)
	if err != nil {
		return nil, err
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(32))
	pad := make([]byte, 1+n.Int64())
	rand.Read(pad)
	s = append(s, &age.Stanza{Type: "cktest-pad", Args: []string{base64.RawStdEncoding.EncodeToString(pad)}})
	return s, nil
}

func main() {
	p, err := plugin.New("cktest")
	if err != nil {
		panic(err)
	}
	p.HandleRecipient(func(data []byte) (age.Recipient, error) {
		s := string(data)
		if v, ok := strings.CutPrefix(s, "var:"); ok {
			r, err := age.ParseX25519Recipient(v)
			return varRecipient{r}, err
		}
		return age.ParseX25519Recipient(s)
	})
	p.HandleIdentity(func(data []byte) (age.Identity, error) {
		return age.ParseX25519Identity(string(data))
	})
	os.Exit(p.Main())
}
