package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/crypto/envelope"
	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/seal"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// The pipeline is a sequence of stages over one job:
//
//	admit -> seal (one pass: read, encrypt, upload the ciphertext)
//	      -> publish (sign; store signatures and manifest)
//	      -> prove -> finish (shred)
//
// Each stage returns resNext to go on, or the result that ends this
// attempt. A restart resumes at the first stage whose input is durable:
// a sealed archive is published from its recorded manifest without being
// read again, an uploaded one is proven with Stat.

// resNext is internal to the stage sequence: the stage is done, run the
// next one.
const resNext result = -1

// stage is one step of the pipeline.
type stage func(context.Context, *job) (result, error)

// job is one attempt at vaulting one archive version.
type job struct {
	it   *item
	snap admit.Snapshot
	p    *Progress

	// Set by admit, for a job that reads the archive.
	lease        *admit.Candidate
	pre          *checkpoint.Info // identity from the pre-scan
	rs           *envelope.RecipientSet
	checkpointed time.Time
	fn           checkpoint.Filename
	fnErr        error

	// Set by publish.
	signed *manifest.Signed
	start  time.Time
}

// release gives up the read lease (before shredding, and on every exit).
func (j *job) release() {
	if j.lease != nil {
		j.lease.Close()
		j.lease = nil
	}
}

// run runs stages in order until one ends the attempt.
func (d *Daemon) run(ctx context.Context, j *job, stages ...stage) (result, error) {
	defer j.release()
	for _, s := range stages {
		res, err := s(ctx, j)
		if res != resNext || err != nil {
			return res, err
		}
	}
	return resDone, nil
}

// vault runs the whole pipeline for a version seen for the first time (or
// whose earlier attempt was abandoned).
func (d *Daemon) vault(ctx context.Context, it *item, snap admit.Snapshot) (result, error) {
	j := &job{it: it, snap: snap, start: time.Now()}
	return d.run(ctx, j, d.admitStage, d.sealStage, d.publishStage, d.proveStage, d.finishStage)
}

// admitStage opens the archive under a read lease, reads its identity
// (pre-scan) and applies the namespace policy.
func (d *Daemon) admitStage(ctx context.Context, j *job) (result, error) {
	name := j.it.name
	if !j.it.detected {
		j.it.detected = true
		d.record(ctx, audit.Record{Action: "detected", Subject: name, Outcome: audit.OK,
			Detail: map[string]string{"size": strconv.FormatInt(j.snap.Size, 10), "inode": strconv.FormatUint(j.snap.Ino, 10)}})
	}
	c, err := admit.Open(j.it.dir, name, d.owner, j.snap.Ino)
	if err != nil {
		r := admit.ReasonOf(err)
		if r.Transient() {
			return resPoll, nil
		}
		if r == admit.ReasonIO {
			return resBackoff, &failure{"admit-io", err}
		}
		return d.reject(ctx, name, j.snap, r, err, nil)
	}
	j.lease, j.snap = c, c.Snapshot
	d.m.admitLatency.Observe(time.Since(j.it.first).Seconds())
	d.m.stage.WithLabelValues("admit").Observe(time.Since(j.start).Seconds())

	t := time.Now()
	pre, err := prescan(ctx, c.File, j.snap.Size)
	d.m.stage.WithLabelValues("prescan").Observe(time.Since(t).Seconds())
	if err != nil && (ctx.Err() != nil || admit.ReasonOf(err) == admit.ReasonIO) {
		return resBackoff, &failure{"prescan", err} // stopping, or the disk failed: no verdict on the archive
	}
	if err != nil {
		return d.reject(ctx, name, j.snap, admit.ReasonOf(err), err, nil)
	}
	j.pre = pre
	id := pre.Identity
	rs, skip, err := d.recipientsFor(id.Namespace)
	if err != nil {
		return resBackoff, &failure{"recipients", err}
	}
	if skip {
		p := newProgress(name, j.snap)
		p.Stage, p.Namespace, p.Pod, p.Container = StageSkipped, id.Namespace, id.Pod, id.Container
		p.Reason = "namespace policy: skip"
		if err := d.record(ctx, audit.Record{Action: "skipped", Subject: name, Namespace: id.Namespace, Pod: id.Pod,
			Container: id.Container, Outcome: audit.OK, Detail: map[string]string{"reason": p.Reason}}); err != nil {
			return resBackoff, &failure{"audit", err}
		}
		if err := d.state.Put(p); err != nil {
			return resBackoff, &failure{"state-db", err}
		}
		return resDone, nil
	}
	j.rs = rs
	j.checkpointed = pre.Checkpointed
	j.fn, j.fnErr = checkpoint.ParseFilename(name)
	if j.checkpointed.IsZero() && j.fnErr == nil {
		j.checkpointed = j.fn.Time
	}
	return resNext, nil
}

// sealStage takes a fresh object key, records it, and makes the one pass:
// admitted fd -> (inspector, SHA-256, age, SHA-256) -> create-only Put of
// the ciphertext. It ends with the unsigned manifest durable in the state
// database (StageSealed), so nothing after it reads the archive again.
func (d *Daemon) sealStage(ctx context.Context, j *job) (result, error) {
	name, id, snap := j.it.name, j.pre.Identity, j.snap
	base, err := manifest.NewKey(manifest.KeyInput{Namespace: id.Namespace, Pod: id.Pod, Container: id.Container,
		Node: d.node, CheckpointedAt: j.checkpointed})
	if err != nil {
		return d.reject(ctx, name, snap, admit.ReasonNotACheckpoint, fmt.Errorf("identity cannot name an object: %w", err), nil)
	}
	objs := manifest.ObjectsFor(base)
	p := newProgress(name, snap)
	p.Stage, p.Object, p.Namespace, p.Pod, p.Container = StageSealing, base, id.Namespace, id.Pod, id.Container
	if err := d.state.Put(p); err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	j.p = p
	reached(ptSealing, p)
	if err := d.record(ctx, audit.Record{Action: "admitted", Subject: name, Namespace: id.Namespace, Pod: id.Pod,
		Container: id.Container, Outcome: audit.OK, Detail: map[string]string{
			"object": base, "size": strconv.FormatInt(snap.Size, 10), "inode": strconv.FormatUint(snap.Ino, 10)}}); err != nil {
		return resBackoff, &failure{"audit", err}
	}
	reached(ptSealingAdmitted, p)

	t := time.Now()
	lr := &readRecorder{r: j.lease.Reader()}
	in := checkpoint.NewInspector(checkpoint.Limits{})
	iw := &writeRecorder{w: in}
	sr, err := seal.NewReader(ctx, io.TeeReader(lr, iw), snap.Size, j.rs)
	if err != nil {
		in.Abort(err)
		return resBackoff, &failure{"seal", err}
	}
	ctInfo, putErr := d.store.Put(ctx, objs.Ciphertext, sr, sr.Size(), store.PutOptions{ContentType: "application/age", IfAbsent: true})
	sr.Close()
	dig, sealed := sr.Digests()
	if putErr != nil || !sealed {
		switch {
		case iw.err != nil:
			_, ierr := in.Finish()
			if ierr == nil {
				ierr = iw.err
			}
			return d.reject(ctx, name, snap, admit.ReasonOf(ierr), ierr, p)
		case lr.err != nil && lr.err != io.EOF:
			in.Abort(lr.err)
			if r := admit.ReasonOf(lr.err); r.Transient() {
				d.noteFailure(ctx, j.it, p, string(r), lr.err)
				return resPoll, nil
			}
			return resBackoff, &failure{"read", lr.err}
		default:
			in.Abort(putErr)
			if putErr == nil {
				putErr = errors.New("sealing ended without digests")
			}
			return resBackoff, &failure{"upload", fmt.Errorf("uploading %s to %s: %w", objs.Ciphertext, d.store.Describe(), putErr)}
		}
	}
	info, ierr := in.Finish()
	d.m.stage.WithLabelValues("seal_upload").Observe(time.Since(t).Seconds())
	if ierr == nil && (info.Identity != j.pre.Identity || info.ContainerID != j.pre.ContainerID || !info.Checkpointed.Equal(j.pre.Checkpointed)) {
		ierr = fmt.Errorf("%w: identity read from the stream differs from the pre-scan (duplicate dump members?)", checkpoint.ErrNotCheckpoint)
	}
	if ierr == nil && !manifestEngine(info.Engine) {
		ierr = fmt.Errorf("%w: engine %q is not one ckvault vaults", checkpoint.ErrNotCheckpoint, info.Engine)
	}
	if ierr != nil {
		// One pass means the verdict comes after the upload: withdraw it.
		return d.reject(ctx, name, snap, admit.ReasonOf(ierr), ierr, p)
	}
	if err := j.lease.Recheck(); err != nil {
		// The file changed while it was read: this attempt's ciphertext
		// is not of any one version. Withdraw it now; a poll starts over.
		if aerr := d.abandon(ctx, p, "file changed while it was sealed: "+err.Error()); aerr != nil {
			return resBackoff, aerr
		}
		if r := admit.ReasonOf(err); r.Transient() {
			d.noteFailure(ctx, j.it, p, string(r), err)
			return resPoll, nil
		}
		return resBackoff, &failure{"recheck", err}
	}
	reached(ptCiphertextStored, p)

	m, err := manifest.New(manifest.Sealing{Object: base, Node: d.node, OriginalName: name, Info: info,
		CheckpointedAt: j.checkpointed,
		Plaintext:      manifest.NewDigest(dig.PlaintextSHA256, dig.PlaintextSize),
		Ciphertext:     manifest.NewDigest(dig.CiphertextSHA256, dig.CiphertextSize),
		Recipients:     j.rs.Fingerprints(), VaultedAt: time.Now(), ToolVersion: d.opts.Version})
	if err == nil {
		p.Manifest, err = m.Marshal()
	}
	if err != nil {
		return d.reject(ctx, name, snap, admit.ReasonNotACheckpoint, err, p)
	}
	detail := map[string]string{
		"object":           base,
		"plaintextSHA256":  m.Plaintext.SHA256,
		"plaintextSize":    strconv.FormatInt(dig.PlaintextSize, 10),
		"ciphertextSHA256": m.Ciphertext.SHA256,
		"ciphertextSize":   strconv.FormatInt(dig.CiphertextSize, 10),
		"recipients":       strings.Join(m.Recipients, ","),
		"engine":           info.Engine,
	}
	if mm := nameMismatch(info, j.fn, j.fnErr); mm != "" {
		detail["nameMismatch"] = mm
	}
	if err := d.record(ctx, audit.Record{Action: "sealed", Subject: name, Namespace: id.Namespace, Pod: id.Pod,
		Container: id.Container, Outcome: audit.OK, Detail: detail}); err != nil {
		return resBackoff, &failure{"audit", err}
	}
	reached(ptSealingSealed, p)
	p.Stage = StageSealed
	p.CiphertextSize, p.ManifestSize = dig.CiphertextSize, int64(len(p.Manifest))
	p.PlaintextSHA256, p.CiphertextSHA256 = m.Plaintext.SHA256, m.Ciphertext.SHA256
	p.CiphertextChecksum = ctInfo.Checksum.Algorithm + ":" + ctInfo.Checksum.Value
	p.CiphertextVersion = ctInfo.VersionID
	if err := d.state.Put(p); err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	reached(ptSealed, p)
	return resNext, nil
}

// nameMismatch says how the archive's identity disagrees with its file
// name, or "" when they agree.
func nameMismatch(info *checkpoint.Info, fn checkpoint.Filename, fnErr error) string {
	if fnErr != nil {
		return "file name is not a kubelet checkpoint name"
	}
	err := checkpoint.CrossCheck(info.Identity, info.Checkpointed, fn)
	var me *checkpoint.MismatchError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &me):
		return strings.Join(me.Fields, ",")
	}
	return err.Error()
}

// publishStage signs the recorded manifest (once: the signatures are kept
// in the state database, so every retry stores the same bytes) and stores
// the signatures and then the manifest, each create-only.
func (d *Daemon) publishStage(ctx context.Context, j *job) (result, error) {
	p := j.p
	t := time.Now()
	if p.Signed == nil {
		m, err := manifest.Parse(p.Manifest)
		if err != nil {
			return resBackoff, &failure{"state-db", fmt.Errorf("recorded manifest of %s: %w", p.Name, err)}
		}
		var signed manifest.Signed
		err = testFault(testFaultSign, p.Object)
		if err == nil {
			signed, err = manifest.Sign(ctx, m, d.signer)
		}
		if err != nil {
			return resBackoff, &failure{"sign", err}
		}
		p.Signed = &signed
		if err := d.state.Put(p); err != nil {
			p.Signed = nil
			return resBackoff, &failure{"state-db", err}
		}
		reached(ptSigned, p)
	}
	for _, u := range p.Signed.Uploads() {
		if err := d.create(ctx, u); err != nil {
			if errors.Is(err, errNotOurs) {
				// Someone else's bytes under this attempt's key: the key
				// is spoiled. Start over under a fresh one.
				if aerr := d.abandon(ctx, p, err.Error()); aerr != nil {
					return resBackoff, aerr
				}
				return resBackoff, &failure{"conflict", err}
			}
			return resBackoff, &failure{"upload", err}
		}
		reached(ptStored+strings.TrimPrefix(u.Key, p.Object), p)
	}
	d.m.stage.WithLabelValues("sign_upload").Observe(time.Since(t).Seconds())
	p.Stage = StageUploaded
	if err := d.state.Put(p); err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	reached(ptUploaded, p)
	if err := d.record(ctx, audit.Record{Action: "uploaded", Subject: p.Name, Namespace: p.Namespace, Pod: p.Pod,
		Container: p.Container, Outcome: audit.OK, Detail: map[string]string{"object": p.Object, "store": d.store.Describe(),
			"checksum": p.CiphertextChecksum, "versionID": p.CiphertextVersion}}); err != nil {
		return resBackoff, &failure{"audit", err}
	}
	reached(ptUploadedAudited, p)
	return resNext, nil
}

// errNotOurs: an object exists under one of this attempt's keys with other
// bytes than the attempt means to store there.
var errNotOurs = errors.New("object under this attempt's key holds other bytes")

// create stores one small object create-only. An object already there with
// exactly these bytes is the trace of an earlier try of this same attempt
// (a crash, or a lost response) and counts as stored.
func (d *Daemon) create(ctx context.Context, u manifest.Upload) error {
	_, err := d.store.Put(ctx, u.Key, bytes.NewReader(u.Data), int64(len(u.Data)), store.PutOptions{ContentType: u.ContentType, IfAbsent: true})
	if !errors.Is(err, store.ErrExists) {
		if err != nil {
			return fmt.Errorf("uploading %s to %s: %w", u.Key, d.store.Describe(), err)
		}
		return nil
	}
	o, err := d.store.Open(ctx, u.Key)
	if err != nil {
		return fmt.Errorf("reading back %s from %s: %w", u.Key, d.store.Describe(), err)
	}
	defer o.Close()
	got, err := io.ReadAll(io.LimitReader(o, int64(len(u.Data))+1))
	if err != nil {
		return fmt.Errorf("reading back %s from %s: %w", u.Key, d.store.Describe(), err)
	}
	if !bytes.Equal(got, u.Data) {
		return fmt.Errorf("%s in %s: %w", u.Key, d.store.Describe(), errNotOurs)
	}
	return nil
}

// proveStage checks every object of the attempt in the store (Put already
// proved each one complete by size and CRC64NVME; Stat proves they are all
// still there) and then makes the "proven" audit record durable. Only after
// that may the local copy be destroyed.
func (d *Daemon) proveStage(ctx context.Context, j *job) (result, error) {
	p := j.p
	t := time.Now()
	objs := manifest.ObjectsFor(p.Object)
	for _, k := range objs.All() {
		oi, err := d.store.Stat(ctx, k)
		if err != nil {
			return resBackoff, &failure{"prove", fmt.Errorf("proving %s in %s: %w", k, d.store.Describe(), err)}
		}
		if (k == objs.Ciphertext && oi.Size != p.CiphertextSize) || (k == objs.Manifest && oi.Size != p.ManifestSize) {
			return resBackoff, &failure{"prove", fmt.Errorf("proving %s in %s: %w: size %d", k, d.store.Describe(), store.ErrIncomplete, oi.Size)}
		}
	}
	if err := d.record(ctx, audit.Record{Action: "proven", Subject: p.Name, Namespace: p.Namespace, Pod: p.Pod,
		Container: p.Container, Outcome: audit.OK, Detail: map[string]string{"object": p.Object,
			"ciphertextSize": strconv.FormatInt(p.CiphertextSize, 10), "ciphertextSHA256": p.CiphertextSHA256,
			"plaintextSHA256": p.PlaintextSHA256, "objects": "6"}}); err != nil {
		return resBackoff, &failure{"audit", err}
	}
	reached(ptProvenAudited, p)
	p.Stage = StageProven
	if err := d.state.Put(p); err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	reached(ptProven, p)
	d.m.vaulted.Inc()
	d.m.vaultedBytes.Add(float64(p.Size))
	d.m.stage.WithLabelValues("prove").Observe(time.Since(t).Seconds())
	if !j.start.IsZero() {
		d.m.stage.WithLabelValues("total").Observe(time.Since(j.start).Seconds())
	}
	d.notify()
	return resNext, nil
}

// finishStage releases the lease and shreds the local copy (finish).
func (d *Daemon) finishStage(ctx context.Context, j *job) (result, error) {
	j.release()
	return d.finish(ctx, j.p)
}

// abandon gives up an attempt whose objects may be partly stored: it
// withdraws what the store lets it delete and records, in one audit record,
// the attempt's key and every object left behind (an orphan: under Object
// Lock a stored object cannot be deleted until its retention ends; GC
// removes orphans past their grace period). The version's progress is
// cleared so that the next attempt starts afresh under a new key.
//
// If the record cannot be made durable the progress stays and abandon
// fails: the caller must not start a new attempt then, since that would
// replace the progress — the only trace of the abandoned key and of any
// orphan it leaves — before any record names them.
func (d *Daemon) abandon(ctx context.Context, p *Progress, why string) error {
	deleted, kept, errs := d.withdraw(ctx, p.Object)
	detail := map[string]string{"object": p.Object, "reason": why, "stage": string(p.Stage)}
	if len(deleted) > 0 {
		detail["deleted"] = strings.Join(deleted, ",")
	}
	if len(kept) > 0 {
		detail["orphans"] = strings.Join(kept, ",")
		detail["withdrawError"] = errs.Error()
		d.m.orphans.Add(float64(len(kept)))
	}
	d.m.abandoned.Inc()
	d.log.Warn("abandoned an upload attempt; the next one uses a new key", "file", p.Name, "object", p.Object,
		"reason", why, "orphans", len(kept))
	if err := d.record(ctx, audit.Record{Action: "abandoned", Subject: p.Name, Namespace: p.Namespace, Pod: p.Pod,
		Container: p.Container, Outcome: audit.Error, Detail: detail}); err != nil {
		return &failure{"audit", fmt.Errorf("recording the abandoned attempt %s of %s: %w", p.Object, p.Name, err)}
	}
	reached(ptAbandoned, p)
	if err := d.state.Delete(p); err != nil {
		d.log.Error("clearing the progress of an abandoned attempt", "file", p.Name, "err", err)
	}
	return nil
}

// withdraw deletes whatever exists of the objects under base. It returns
// the keys deleted and the keys that stay (locked, or the delete failed).
func (d *Daemon) withdraw(ctx context.Context, base string) (deleted, kept []string, err error) {
	var errs []error
	for _, k := range manifest.ObjectsFor(base).All() {
		if _, serr := d.store.Stat(ctx, k); errors.Is(serr, store.ErrNotExist) {
			continue
		}
		if derr := d.store.Delete(ctx, k, ""); derr != nil {
			kept = append(kept, k)
			errs = append(errs, derr)
			continue
		}
		deleted = append(deleted, k)
	}
	return deleted, kept, errors.Join(errs...)
}

// testFaultSign, when set by a test, runs before each signing and can fail
// it (the fault-injection test's unavailable signer). Nil in production.
var testFaultSign func(object string) error

// testFaultAudit, when set by a test, runs before each audit record the
// pipeline makes and can refuse it (a full disk, an I/O error). Nil in
// production.
var testFaultAudit func(r audit.Record) error

func testFaultRecord(r audit.Record) error {
	if testFaultAudit == nil {
		return nil
	}
	return testFaultAudit(r)
}

func testFault(f func(string) error, object string) error {
	if f == nil {
		return nil
	}
	return f(object)
}
