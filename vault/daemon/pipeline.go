package daemon

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/checkpoint"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
	"github.com/checkpoint-vault/ckvault/vault/seal"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/storeconfig"
)

// UploadTuning is the daemon's multipart upload buffering: 2 parts of
// 8 MiB in flight per archive (s3store's default is 2 × 16 MiB). With the
// sealing buffers it keeps the daemon under its 64 MiB peak RSS target;
// the store benchmark (BenchmarkUpload2GiB) shows no throughput loss
// against MinIO. It bounds one object to 10 000 parts, 78 GiB.
var UploadTuning = storeconfig.Tuning{PartSize: 8 << 20, Concurrency: 2}

// result tells the scheduler what to do with a name after one attempt.
type result int

const (
	// resDone: nothing more to do for the version seen (vaulted, rejected,
	// skipped, pinned or gone).
	resDone result = iota
	// resPoll: the file is still being written (or changed while read):
	// look again shortly.
	resPoll
	// resBackoff: the store or the node failed; retry with backoff.
	resBackoff
)

// failure is an attempt that must be retried; reason labels the metric and
// the audit record.
type failure struct {
	reason string
	err    error
}

func (f *failure) Error() string { return f.reason + ": " + f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

func fail(reason string, format string, args ...any) *failure {
	return &failure{reason: reason, err: fmt.Errorf(format, args...)}
}

// process makes one attempt at the archive called name, resuming from its
// recorded stage.
func (d *Daemon) process(ctx context.Context, it *item) (result, error) {
	snap, err := admit.Stat(it.dir, it.name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || admit.ReasonOf(err) == admit.ReasonVanished {
			if err := d.settleName(ctx, it.dir, it.name, nil); err != nil {
				return resBackoff, err
			}
			return resDone, nil
		}
		return resBackoff, fail("stat", "stat %s: %w", it.name, err)
	}
	p, err := d.state.Get(it.name, snap)
	if err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	if p != nil {
		switch p.Stage {
		case StageShredded, StageRejected, StageSkipped:
			return resDone, nil
		case StageProven, StagePinned, StageShredding:
			return d.finish(ctx, p)
		case StageUploaded:
			// Every object was stored and proven by Put before the
			// crash: prove again with Stat rather than read the archive a
			// second time.
			if err := d.prove(ctx, p); err != nil {
				if errors.Is(err, store.ErrNotExist) {
					break // start again
				}
				return resBackoff, err
			}
			return d.finish(ctx, p)
		}
	}
	if p == nil {
		if err := d.settleName(ctx, it.dir, it.name, &snap); err != nil {
			return resBackoff, err
		}
	}
	return d.vault(ctx, it, snap)
}

// vault admits, seals, uploads, signs, proves and then finishes (shreds) one
// archive version.
func (d *Daemon) vault(ctx context.Context, it *item, snap admit.Snapshot) (result, error) {
	name := it.name
	start := time.Now()
	if !it.detected {
		it.detected = true
		d.record(ctx, audit.Record{Action: "detected", Subject: name, Outcome: audit.OK,
			Detail: map[string]string{"size": strconv.FormatInt(snap.Size, 10), "inode": strconv.FormatUint(snap.Ino, 10)}})
	}
	c, err := admit.Open(it.dir, name, d.owner, snap.Ino)
	if err != nil {
		r := admit.ReasonOf(err)
		if r.Transient() {
			return resPoll, nil
		}
		if r == admit.ReasonIO {
			return resBackoff, &failure{"admit-io", err}
		}
		return d.reject(ctx, name, snap, r, err, nil)
	}
	closed := false
	closeC := func() {
		if !closed {
			closed = true
			c.Close()
		}
	}
	defer closeC()
	snap = c.Snapshot
	d.m.admitLatency.Observe(time.Since(it.first).Seconds())
	d.m.stage.WithLabelValues("admit").Observe(time.Since(start).Seconds())

	t := time.Now()
	pre, err := prescan(ctx, c.File, snap.Size)
	d.m.stage.WithLabelValues("prescan").Observe(time.Since(t).Seconds())
	if err != nil && ctx.Err() != nil {
		return resBackoff, &failure{"prescan", err} // stopping: no verdict on the archive
	}
	if err != nil {
		return d.reject(ctx, name, snap, admit.ReasonOf(err), err, nil)
	}
	id := pre.Identity
	rs, skip, err := d.recipientsFor(id.Namespace)
	if err != nil {
		return resBackoff, &failure{"recipients", err}
	}
	if skip {
		p := newProgress(name, snap)
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
	checkpointed := pre.Checkpointed
	fn, fnErr := checkpoint.ParseFilename(name)
	if checkpointed.IsZero() && fnErr == nil {
		checkpointed = fn.Time
	}
	keyIn := manifest.KeyInput{Namespace: id.Namespace, Pod: id.Pod, Container: id.Container, Node: d.node,
		CheckpointedAt: checkpointed, ContainerID: pre.ContainerID, OriginalName: name, Size: snap.Size}
	base, err := manifest.BaseKey(keyIn)
	if err != nil {
		return d.reject(ctx, name, snap, admit.ReasonNotACheckpoint, fmt.Errorf("identity cannot name an object: %w", err), nil)
	}
	objs := manifest.ObjectsFor(base)
	p := newProgress(name, snap)
	p.Stage, p.Object, p.Namespace, p.Pod, p.Container = StageSealing, base, id.Namespace, id.Pod, id.Container
	if err := d.state.Put(p); err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	reached("sealing", p)
	if err := d.record(ctx, audit.Record{Action: "admitted", Subject: name, Namespace: id.Namespace, Pod: id.Pod,
		Container: id.Container, Outcome: audit.OK, Detail: map[string]string{
			"object": base, "size": strconv.FormatInt(snap.Size, 10), "inode": strconv.FormatUint(snap.Ino, 10)}}); err != nil {
		return resBackoff, &failure{"audit", err}
	}
	reached("sealing/admitted", p)

	// The one pass: admitted fd -> (inspector, SHA-256, age, SHA-256) -> Put.
	t = time.Now()
	lr := &readRecorder{r: c.Reader()}
	in := checkpoint.NewInspector(checkpoint.Limits{})
	iw := &writeRecorder{w: in}
	sr, err := seal.NewReader(ctx, io.TeeReader(lr, iw), snap.Size, rs)
	if err != nil {
		in.Abort(err)
		return resBackoff, &failure{"seal", err}
	}
	ctInfo, putErr := d.store.Put(ctx, objs.Ciphertext, sr, sr.Size(), store.PutOptions{ContentType: "application/age"})
	sr.Close()
	dig, sealed := sr.Digests()
	if putErr != nil || !sealed {
		switch {
		case iw.err != nil:
			_, ierr := in.Finish()
			if ierr == nil {
				ierr = iw.err
			}
			return d.reject(ctx, name, snap, admit.ReasonOf(ierr), ierr, nil)
		case lr.err != nil && lr.err != io.EOF:
			in.Abort(lr.err)
			if r := admit.ReasonOf(lr.err); r.Transient() {
				d.noteFailure(ctx, it, p, string(r), lr.err)
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
	if ierr == nil && (info.Identity != pre.Identity || info.ContainerID != pre.ContainerID || !info.Checkpointed.Equal(pre.Checkpointed)) {
		ierr = fmt.Errorf("%w: identity read from the stream differs from the pre-scan (duplicate dump members?)", checkpoint.ErrNotCheckpoint)
	}
	if ierr == nil && !manifestEngine(info.Engine) {
		ierr = fmt.Errorf("%w: engine %q is not one ckvault vaults", checkpoint.ErrNotCheckpoint, info.Engine)
	}
	if ierr != nil {
		// One pass means the verdict comes after the upload: withdraw it.
		return d.reject(ctx, name, snap, admit.ReasonOf(ierr), ierr, []string{objs.Ciphertext})
	}
	if err := c.Recheck(); err != nil {
		d.deleteObjects(ctx, objs.Ciphertext)
		if r := admit.ReasonOf(err); r.Transient() {
			d.noteFailure(ctx, it, p, string(r), err)
			return resPoll, nil
		}
		return resBackoff, &failure{"recheck", err}
	}
	reached("sealing/ciphertext-stored", p)
	detail := map[string]string{
		"object":           base,
		"plaintextSHA256":  hex.EncodeToString(dig.PlaintextSHA256[:]),
		"plaintextSize":    strconv.FormatInt(dig.PlaintextSize, 10),
		"ciphertextSHA256": hex.EncodeToString(dig.CiphertextSHA256[:]),
		"ciphertextSize":   strconv.FormatInt(dig.CiphertextSize, 10),
		"recipients":       strings.Join(rs.Fingerprints(), ","),
		"engine":           info.Engine,
	}
	if fnErr != nil {
		detail["nameMismatch"] = "file name is not a kubelet checkpoint name"
	} else if err := checkpoint.CrossCheck(info.Identity, info.Checkpointed, fn); err != nil {
		var me *checkpoint.MismatchError
		if errors.As(err, &me) {
			detail["nameMismatch"] = strings.Join(me.Fields, ",")
		} else {
			detail["nameMismatch"] = err.Error()
		}
	}
	rec := audit.Record{Subject: name, Namespace: id.Namespace, Pod: id.Pod, Container: id.Container, Outcome: audit.OK}
	rec.Action, rec.Detail = "sealed", detail
	if err := d.record(ctx, rec); err != nil {
		return resBackoff, &failure{"audit", err}
	}
	reached("sealing/sealed", p)

	// Manifest and signatures.
	t = time.Now()
	m := &manifest.Manifest{
		Format: manifest.FormatV1, Object: base,
		Namespace: id.Namespace, Pod: id.Pod, Container: id.Container, Node: d.node,
		CheckpointedAt: manifest.Time{Time: checkpointed.UTC()}, VaultedAt: manifest.Time{Time: time.Now().UTC()},
		OriginalName: name,
		Plaintext:    manifest.NewDigest(dig.PlaintextSHA256, dig.PlaintextSize),
		Ciphertext:   manifest.NewDigest(dig.CiphertextSHA256, dig.CiphertextSize),
		Recipients:   rs.Fingerprints(),
		Checkpoint: manifest.Checkpoint{Engine: info.Engine, Runtime: info.Runtime, ContainerID: info.ContainerID,
			Image: info.Image, ImageRef: info.ImageRef, CreatedAt: manifest.Time{Time: info.Created}},
		Archive:     manifest.ArchiveOf(info),
		ToolVersion: d.opts.Version,
	}
	signed, err := manifest.Sign(ctx, m, d.signer)
	if err != nil {
		if errors.Is(err, manifest.ErrInvalid) {
			return d.reject(ctx, name, snap, admit.ReasonNotACheckpoint, err, []string{objs.Ciphertext})
		}
		return resBackoff, &failure{"sign", err}
	}
	// The manifest goes last: a manifest in the store means its companions
	// are there too.
	for _, o := range []struct {
		key, ctype string
		b          []byte
	}{
		{objs.CiphertextSig, "text/plain", signed.CiphertextSig.Sig},
		{objs.CiphertextBundle, "application/json", signed.CiphertextSig.Bundle},
		{objs.ManifestSig, "text/plain", signed.ManifestSig.Sig},
		{objs.ManifestBundle, "application/json", signed.ManifestSig.Bundle},
		{objs.Manifest, "application/json", signed.Manifest},
	} {
		if _, err := d.store.Put(ctx, o.key, bytes.NewReader(o.b), int64(len(o.b)), store.PutOptions{ContentType: o.ctype}); err != nil {
			return resBackoff, &failure{"upload", fmt.Errorf("uploading %s to %s: %w", o.key, d.store.Describe(), err)}
		}
	}
	d.m.stage.WithLabelValues("sign_upload").Observe(time.Since(t).Seconds())
	reached("sealing/objects-stored", p)
	p.Stage = StageUploaded
	p.CiphertextSize, p.ManifestSize = dig.CiphertextSize, int64(len(signed.Manifest))
	p.PlaintextSHA256, p.CiphertextSHA256 = detail["plaintextSHA256"], detail["ciphertextSHA256"]
	if err := d.state.Put(p); err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	reached("uploaded", p)
	rec.Action = "uploaded"
	rec.Detail = map[string]string{"object": base, "store": d.store.Describe(),
		"checksum": ctInfo.Checksum.Algorithm + ":" + ctInfo.Checksum.Value, "versionID": ctInfo.VersionID}
	if err := d.record(ctx, rec); err != nil {
		return resBackoff, &failure{"audit", err}
	}
	reached("uploaded/audited", p)
	if err := d.prove(ctx, p); err != nil {
		return resBackoff, err
	}
	closeC() // release the lease before shredding
	d.m.stage.WithLabelValues("total").Observe(time.Since(start).Seconds())
	return d.finish(ctx, p)
}

// prove checks every object of p in the store (Put already proved each one
// complete by size and CRC64NVME; Stat proves they are all still there) and
// then makes the "proven" audit record durable. Only after that may the
// local copy be destroyed.
func (d *Daemon) prove(ctx context.Context, p *Progress) error {
	t := time.Now()
	objs := manifest.ObjectsFor(p.Object)
	for _, k := range []string{objs.Ciphertext, objs.CiphertextSig, objs.CiphertextBundle, objs.ManifestSig, objs.ManifestBundle, objs.Manifest} {
		oi, err := d.store.Stat(ctx, k)
		if err != nil {
			return &failure{"prove", fmt.Errorf("proving %s in %s: %w", k, d.store.Describe(), err)}
		}
		if (k == objs.Ciphertext && oi.Size != p.CiphertextSize) || (k == objs.Manifest && oi.Size != p.ManifestSize) {
			return &failure{"prove", fmt.Errorf("proving %s in %s: %w: size %d", k, d.store.Describe(), store.ErrIncomplete, oi.Size)}
		}
	}
	if err := d.record(ctx, audit.Record{Action: "proven", Subject: p.Name, Namespace: p.Namespace, Pod: p.Pod,
		Container: p.Container, Outcome: audit.OK, Detail: map[string]string{"object": p.Object,
			"ciphertextSize": strconv.FormatInt(p.CiphertextSize, 10), "ciphertextSHA256": p.CiphertextSHA256,
			"plaintextSHA256": p.PlaintextSHA256, "objects": "6"}}); err != nil {
		return &failure{"audit", err}
	}
	reached(string(p.Stage)+"/proven-audited", p)
	p.Stage = StageProven
	if err := d.state.Put(p); err != nil {
		return &failure{"state-db", err}
	}
	reached("proven", p)
	d.m.vaulted.Inc()
	d.m.vaultedBytes.Add(float64(p.Size))
	d.m.stage.WithLabelValues("prove").Observe(time.Since(t).Seconds())
	d.notify()
	return nil
}

// reject records that a file version is not vaulted, once: the stored stage
// keeps later scans from auditing it again. Uploaded objects are withdrawn.
func (d *Daemon) reject(ctx context.Context, name string, snap admit.Snapshot, r admit.Reason, cause error, uploaded []string) (result, error) {
	detail := map[string]string{"reason": string(r), "error": cause.Error(),
		"size": strconv.FormatInt(snap.Size, 10), "inode": strconv.FormatUint(snap.Ino, 10)}
	if len(uploaded) > 0 {
		if err := d.deleteObjects(ctx, uploaded...); err != nil {
			detail["withdraw"] = err.Error()
		} else {
			detail["withdraw"] = "uploaded ciphertext deleted"
		}
	}
	if err := d.record(ctx, audit.Record{Action: "rejected", Subject: name, Outcome: audit.Denied, Detail: detail}); err != nil {
		return resBackoff, &failure{"audit", err}
	}
	p := newProgress(name, snap)
	p.Stage, p.Reason = StageRejected, string(r)
	if err := d.state.Put(p); err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	d.m.rejected.WithLabelValues(string(r)).Inc()
	d.log.Warn("rejected; left in place", "file", name, "reason", r, "err", cause)
	d.notify()
	return resDone, nil
}

func (d *Daemon) deleteObjects(ctx context.Context, keys ...string) error {
	var errs []error
	for _, k := range keys {
		if err := d.store.Delete(ctx, k, ""); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// noteFailure audits a failed attempt once per item and reason, not on every
// retry.
func (d *Daemon) noteFailure(ctx context.Context, it *item, p *Progress, reason string, err error) {
	d.m.failures.WithLabelValues(reason).Inc()
	if it.lastReason == reason {
		return
	}
	it.lastReason = reason
	rec := audit.Record{Action: "failed", Subject: it.name, Outcome: audit.Error,
		Detail: map[string]string{"reason": reason, "error": err.Error(), "retry": "yes"}}
	if p != nil {
		rec.Namespace, rec.Pod, rec.Container = p.Namespace, p.Pod, p.Container
		rec.Detail["object"] = p.Object
	}
	d.record(ctx, rec)
}

func manifestEngine(e string) bool {
	for _, x := range manifest.Engines {
		if e == x {
			return true
		}
	}
	return false
}

// readRecorder and writeRecorder remember the first error of each side of
// the tee, so a failed upload can be told apart from a rejected archive or
// a file that changed.
type readRecorder struct {
	r   io.Reader
	err error
}

func (r *readRecorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

type writeRecorder struct {
	w   io.Writer
	err error
}

func (w *writeRecorder) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}
