package auditsock

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/checkpoint-vault/ckvault/audit"
)

type key struct{ k *ecdsa.PrivateKey }

func (k key) SignDigest(_ context.Context, d [32]byte) ([]byte, error) {
	return ecdsa.SignASN1(rand.Reader, k.k, d[:])
}
func (k key) KeyHint() string { return "test" }
func (k key) VerifyDigest(d [32]byte, sig []byte) (string, error) {
	if !ecdsa.VerifyASN1(&k.k.PublicKey, d[:], sig) {
		return "", errors.New("bad signature")
	}
	return "test", nil
}

func TestQueryVerifyOverSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	pk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k := key{pk}
	l, err := audit.Open(audit.Path(dir), audit.Options{Node: "node-a", Signer: k, Verifier: k, SignEvery: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		l.Append(ctx, audit.Record{Actor: "daemon", Action: "uploaded", Subject: "x", Namespace: "ns", Outcome: audit.OK})
	}
	sock := filepath.Join(dir, SocketName)
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(sock); st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v", st.Mode())
	}
	srv := NewServer(Handler(l))
	go srv.Serve(ln)
	defer srv.Close()

	c := Dial(sock)
	page, err := c.Query(ctx, audit.Filter{Action: "uploaded", Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Records) != 3 || page.Next == "" {
		t.Fatalf("page: %+v", page)
	}
	rep, err := c.Verify(ctx)
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	// Both requests are in the trail, with the caller's uid.
	got, _ := l.Query(ctx, audit.Filter{Actor: "uid:" + strconv.Itoa(os.Geteuid())})
	if len(got.Records) != 2 || got.Records[0].Action != "audit-queried" || got.Records[0].Detail["action"] != "uploaded" || got.Records[1].Action != "audit-verified" {
		t.Fatalf("request records: %+v", got.Records)
	}
	// A second daemon must not steal the socket.
	if _, err := Listen(sock); err == nil {
		t.Fatal("Listen on a live socket succeeded")
	}
}

func TestRefusedWithoutPeerCredentials(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	l, err := audit.Open(audit.Path(dir), audit.Options{Node: "n"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sock := filepath.Join(dir, SocketName)
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(l)} // no ConnContext: misuse
	go srv.Serve(ln)
	defer srv.Close()
	_, err = Dial(sock).Query(context.Background(), audit.Filter{})
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("query without peer credentials: %v", err)
	}
}

func TestNoDaemon(t *testing.T) {
	_, err := Dial(filepath.Join(t.TempDir(), SocketName)).Query(context.Background(), audit.Filter{})
	if !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("got %v", err)
	}
}
