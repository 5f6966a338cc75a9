package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/crypto/signing"
	"github.com/checkpoint-vault/ckvault/internal/samplearchive"
	"github.com/checkpoint-vault/ckvault/internal/testregistry"
	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/internal/testtools"
	"github.com/checkpoint-vault/ckvault/internal/testvault"
	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/responder"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

// BenchmarkRestore1GiB measures `ckvault restore` of a 1 GiB checkpoint
// (CKVAULT_BENCH_RESTORE_MIB overrides the size) in the default
// configuration: the real binary built from this tree, run as a child; keys
// made by `ckvault keygen` (post-quantum hybrid age recipient, cosign-encrypted
// signing key); the checkpoint in the local MinIO over TLS; the image pushed
// to a TLS registry on loopback (go-containerregistry's, in this process).
// In the same run it times what a responder does without restore: `ckvault
// fetch` of the same checkpoint to a file, then stock `crane append` of that
// tar to the same registry. Peak RSS is each child's VmHWM, sampled from
// /proc while it runs (runMeasured).
//
//	go test ./cmd/ckvault -run '^$' -bench Restore1GiB -benchtime 1x
func BenchmarkRestore1GiB(b *testing.B) {
	mib := int64(1024)
	if s := os.Getenv("CKVAULT_BENCH_RESTORE_MIB"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatalf("CKVAULT_BENCH_RESTORE_MIB=%q: %v", s, err)
		}
		mib = v
	}
	craneBin := testtools.Path(b, "crane")
	srv := testservers.Shared(b, testservers.MinIO)
	dir := b.TempDir()
	bin := filepath.Join(dir, "ckvault")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/checkpoint-vault/ckvault/cmd/ckvault").CombinedOutput(); err != nil {
		b.Fatalf("building ckvault: %v\n%s", err, out)
	}

	// Keys as an operator makes them.
	keys := filepath.Join(dir, "keys")
	password := rand.Text()
	kg := exec.Command(bin, "keygen", "--dir", keys)
	kg.Env = append(os.Environ(), signing.PasswordEnv+"="+password)
	if out, err := kg.CombinedOutput(); err != nil {
		b.Fatalf("ckvault keygen: %v\n%s", err, out)
	}
	benchMust(b, os.WriteFile(filepath.Join(keys, "signing.pass"), []byte(password+"\n"), 0o600))
	vk := keygenKeys(b, keys, password)

	ak, sk := filepath.Join(dir, "ak"), filepath.Join(dir, "sk")
	benchMust(b, os.WriteFile(ak, []byte(srv.AccessKey+"\n"), 0o600))
	benchMust(b, os.WriteFile(sk, []byte(srv.SecretKey+"\n"), 0o600))
	scfg := policy.StoreConfig{URL: srv.StoreURL(srv.Bucket, fmt.Sprintf("bench-restore-%d", time.Now().UnixNano())),
		CAFile: srv.CAFile, PathStyle: "path", AccessKeyFile: ak, SecretKeyFile: sk}
	st, err := storeconfig.Open(scfg, nil)
	benchMust(b, err)
	o := samplearchive.Options{Engine: samplearchive.CRIO, Namespace: "bench", Pod: "big", MemoryBytes: mib << 20}
	archive := filepath.Join(dir, samplearchive.Filename(o))
	benchMust(b, samplearchive.WriteFile(archive, o))
	m, _, err := testvault.Put(context.Background(), st, vk, archive, "bench-node")
	benchMust(b, err)
	os.Remove(archive) // the manifest has its digest; keep the disk free
	kp, _ := responder.ParseBaseKey(m.Object)

	config := filepath.Join(dir, "ckvault.yaml")
	benchMust(b, os.WriteFile(config, []byte(fmt.Sprintf(`node: bench-responder
stateDir: %s
checkpointsDir: %s
store:
  url: %s
  caFile: %s
  pathStyle: path
  accessKeyFile: %s
  secretKeyFile: %s
recipientsFile: keys/age.pub
signing:
  key: keys/signing.key
  passwordFile: keys/signing.pass
  publicKey: keys/signing.pub
`, filepath.Join(dir, "state"), filepath.Join(dir, "checkpoints"), scfg.URL, srv.CAFile, ak, sk)), 0o600))
	identity := filepath.Join(keys, "age.key")
	tmp := filepath.Join(dir, "tmp")
	benchMust(b, os.Mkdir(tmp, 0o700))
	reg := testregistry.Start(b, testregistry.Options{})
	b.Logf("archive %d MiB (%d bytes), object %s, registry %s", m.Plaintext.Size>>20, m.Plaintext.Size, m.Object, reg.Host)

	var restoreT, fetchT, appendT time.Duration
	// CPU time of each child (user+system): on a shared machine wall time
	// follows the load; CPU time much less so. The registry's own work (it
	// runs in this process) is in neither.
	var restoreCPU, fetchCPU, appendCPU time.Duration
	cpu := func(c *exec.Cmd) time.Duration { return c.ProcessState.UserTime() + c.ProcessState.SystemTime() }
	var restoreRSS, fetchRSS, craneRSS int64
	n := 0
	for b.Loop() {
		n++
		// Alternate the two, so that a change in the shared machine's
		// load during the run weighs on both.
		rcmd := exec.Command(bin, "restore", kp.ShortID, "--config", config, "-i", identity,
			"--image", fmt.Sprintf("%s/bench/restore:%d", reg.Host, n), "--registry-ca", reg.CAFile, "--tmp-dir", tmp)
		el, hwm := runMeasured(b, rcmd)
		restoreT += el
		restoreCPU += cpu(rcmd)
		restoreRSS = max(restoreRSS, hwm)
		if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
			b.Fatalf("restore left %d files in its temporary directory", len(ents))
		}

		out := filepath.Join(dir, "archive.tar")
		fcmd := exec.Command(bin, "fetch", kp.ShortID, "--config", config, "-i", identity, "-o", out)
		el, hwm = runMeasured(b, fcmd)
		fetchT += el
		fetchCPU += cpu(fcmd)
		fetchRSS = max(fetchRSS, hwm)
		acmd := exec.Command(craneBin, "append", "-f", out, "-t", fmt.Sprintf("%s/bench/append:%d", reg.Host, n))
		acmd.Env = append(os.Environ(), "SSL_CERT_FILE="+reg.CAFile)
		el, hwm = runMeasured(b, acmd)
		appendT += el
		appendCPU += cpu(acmd)
		craneRSS = max(craneRSS, hwm)
		os.Remove(out)
	}
	size := float64(n) * float64(m.Plaintext.Size)
	b.ReportMetric(restoreT.Seconds()/float64(n), "restore-s")
	b.ReportMetric(fetchT.Seconds()/float64(n), "fetch-s")
	b.ReportMetric(appendT.Seconds()/float64(n), "crane-append-s")
	b.ReportMetric((fetchT+appendT).Seconds()/restoreT.Seconds(), "x-fetch+append")
	b.ReportMetric(restoreCPU.Seconds()/float64(n), "restore-cpu-s")
	b.ReportMetric((fetchCPU+appendCPU).Seconds()/float64(n), "fetch+append-cpu-s")
	b.ReportMetric(size/restoreT.Seconds()/(1<<20), "restore-MiB/s")
	b.ReportMetric(float64(restoreRSS)/(1<<20), "restore-peak-RSS-MiB")
	b.ReportMetric(float64(fetchRSS)/(1<<20), "fetch-peak-RSS-MiB")
	b.ReportMetric(float64(craneRSS)/(1<<20), "crane-append-peak-RSS-MiB")
	b.ReportMetric(0, "ns/op")
}

// keygenKeys loads what `ckvault keygen` wrote into dir as testvault keys,
// so that the checkpoint is vaulted to the default recipient and signed
// with the default key.
func keygenKeys(b *testing.B, dir, password string) *testvault.Keys {
	b.Helper()
	s, err := signing.LoadSigner(context.Background(), filepath.Join(dir, "signing.key"), func() ([]byte, error) { return []byte(password), nil })
	benchMust(b, err)
	pub, err := os.ReadFile(filepath.Join(dir, "signing.pub"))
	benchMust(b, err)
	trusted, err := signing.ParseTrustedKeys(pub)
	benchMust(b, err)
	rcpts, err := envelope.LoadRecipientsFile(filepath.Join(dir, "age.pub"))
	benchMust(b, err)
	rs, err := envelope.NewRecipientSet(rcpts...)
	benchMust(b, err)
	pubText, err := os.ReadFile(filepath.Join(dir, "age.pub"))
	benchMust(b, err)
	if !strings.Contains(string(pubText), "age1pq1") {
		b.Fatal("ckvault keygen no longer makes a post-quantum recipient by default; the benchmark must follow the default")
	}
	return &testvault.Keys{Signer: s, Trusted: trusted, Recipients: rs}
}

func benchMust(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}
