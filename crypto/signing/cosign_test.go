package signing

import (
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/internal/testtools"
)

// trustedRootNoAuthorities is the smallest trusted root cosign v2.6.5
// (sigstore-go's root.NewTrustedRootFromJSON) accepts: only the media type,
// with no transparency logs, CAs, CT logs or timestamp authorities. With
// --key and --insecure-ignore-tlog cosign needs nothing else from it.
const trustedRootNoAuthorities = `{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}` + "\n"

// runCosign runs the pinned cosign in dir with extra environment and fails
// the test on a non-zero exit. HOME and TUF_ROOT point into the test's
// temp dir so that cosign's TUF cache never touches the user's.
func runCosign(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	cosign := testtools.Path(t, "cosign")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cosign, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "TUF_ROOT="+filepath.Join(dir, ".sigstore"))
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cosign %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCosignVerifiesOurSignatures: stock cosign verify-blob accepts our
// .sig and our .sigstore.json over a file, given only our public key.
func TestCosignVerifiesOurSignatures(t *testing.T) {
	testtools.Path(t, "cosign")
	ctx := context.Background()
	dir := t.TempDir()
	keyPath, pubPath := newTestKey(t, dir, "pw")
	s, err := LoadSigner(ctx, keyPath, staticPassword("pw"))
	if err != nil {
		t.Fatal(err)
	}
	artifact := []byte("a checkpoint archive, encrypted\n")
	writeFile(t, filepath.Join(dir, "f"), artifact)
	sig, err := s.Sign(ctx, sha256.Sum256(artifact))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "f.sig"), sig.Sig)
	writeFile(t, filepath.Join(dir, "f.sigstore.json"), sig.Bundle)
	writeFile(t, filepath.Join(dir, "tr.json"), []byte(trustedRootNoAuthorities))

	runCosign(t, dir, nil, "verify-blob", "--key", pubPath, "--signature", "f.sig", "--insecure-ignore-tlog=true", "f")
	runCosign(t, dir, nil, "verify-blob", "--bundle", "f.sigstore.json", "--new-bundle-format",
		"--trusted-root", "tr.json", "--key", pubPath, "--insecure-ignore-tlog=true", "f")

	// And cosign rejects the bundle for a changed file: the check is real.
	writeFile(t, filepath.Join(dir, "g"), append(artifact, 'x'))
	cosign := testtools.Path(t, "cosign")
	cmd := exec.Command(cosign, "verify-blob", "--bundle", "f.sigstore.json", "--new-bundle-format",
		"--trusted-root", "tr.json", "--key", pubPath, "--insecure-ignore-tlog=true", "g")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("cosign accepted the bundle for another file:\n%s", out)
	}
}

// TestCosignKeyPairLoads: a key pair made by `cosign generate-key-pair`
// loads as our signer; cosign verifies what we sign with it, and we verify
// what cosign signs with it.
func TestCosignKeyPairLoads(t *testing.T) {
	testtools.Path(t, "cosign")
	ctx := context.Background()
	dir := t.TempDir()
	env := []string{"COSIGN_PASSWORD=cosign pw"}
	runCosign(t, dir, env, "generate-key-pair")
	keyPath, pubPath := filepath.Join(dir, "cosign.key"), filepath.Join(dir, "cosign.pub")

	s, err := LoadSigner(ctx, keyPath, staticPassword("cosign pw"))
	if err != nil {
		t.Fatalf("loading cosign's key: %v", err)
	}
	trusted, err := LoadTrustedKeys(pubPath)
	if err != nil {
		t.Fatal(err)
	}
	artifact := []byte("payload")
	writeFile(t, filepath.Join(dir, "f"), artifact)
	d := sha256.Sum256(artifact)
	sig, err := s.Sign(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := trusted.VerifyDigest(d, sig.Sig); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "ours.sig"), sig.Sig)
	runCosign(t, dir, nil, "verify-blob", "--key", pubPath, "--signature", "ours.sig", "--insecure-ignore-tlog=true", "f")

	runCosign(t, dir, env, "sign-blob", "--key", keyPath, "--output-signature", "theirs.sig", "--tlog-upload=false", "--yes", "f")
	if h, err := trusted.VerifyDigest(d, mustRead(t, filepath.Join(dir, "theirs.sig"))); err != nil || h != s.KeyHint() {
		t.Fatalf("verifying cosign's signature: %q, %v", h, err)
	}
}

// TestOurKeyPairWorksWithCosign: GenerateKeyPair's output is accepted by
// `cosign sign-blob --key` with COSIGN_PASSWORD, and we verify the result.
func TestOurKeyPairWorksWithCosign(t *testing.T) {
	testtools.Path(t, "cosign")
	for _, pw := range []string{"our pw", ""} {
		dir := t.TempDir()
		keyPath, pubPath := newTestKey(t, dir, pw)
		artifact := []byte("payload " + pw)
		writeFile(t, filepath.Join(dir, "f"), artifact)
		runCosign(t, dir, []string{"COSIGN_PASSWORD=" + pw}, "sign-blob", "--key", keyPath,
			"--output-signature", "f.sig", "--tlog-upload=false", "--yes", "f")
		trusted, err := LoadTrustedKeys(pubPath)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := trusted.VerifyDigest(sha256.Sum256(artifact), mustRead(t, filepath.Join(dir, "f.sig"))); err != nil {
			t.Fatalf("password %q: verifying cosign's signature made with our key: %v", pw, err)
		}
	}
}
