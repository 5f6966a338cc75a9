package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/internal/ctxio"
	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/manifest"
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
	// Versions of this name that it no longer holds first: one left
	// between stages (the file was removed or rewritten in place while
	// it was being vaulted) is finished from its record.
	if err := d.settleName(ctx, it.dir, it.name, &snap); err != nil {
		return resBackoff, err
	}
	p, err := d.state.Get(it.name, snap)
	if err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	if p == nil {
		if p, err = d.adoptSameContent(ctx, it, snap); err != nil {
			return resBackoff, err
		}
	}
	if p != nil {
		j := &job{it: it, snap: snap, p: p}
		switch p.Stage {
		case StageShredded, StageRejected, StageSkipped:
			return resDone, nil
		case StageProven, StagePinned, StageShredding:
			return d.finish(ctx, p)
		case StageSealed:
			// The ciphertext is stored and the manifest recorded: publish
			// without reading the archive again.
			return d.run(ctx, j, d.publishStage, d.proveStage, d.finishStage)
		case StageUploaded:
			// Every object was stored and proven by Put before the
			// crash: prove again with Stat rather than read the archive a
			// second time.
			res, err := d.run(ctx, j, d.proveStage, d.finishStage)
			if !spoiled(err) {
				return res, err
			}
			if aerr := d.abandon(ctx, p, "an object of the uploaded attempt is missing or not what was stored: "+err.Error()); aerr != nil {
				return resBackoff, aerr
			}
		case StageSealing:
			// Interrupted while its ciphertext was (perhaps) being
			// stored: the key may hold a partial or complete, possibly
			// WORM-locked ciphertext that no manifest names. Never reuse
			// it: withdraw what can be withdrawn, record the rest, and
			// start again under a new key.
			if aerr := d.abandon(ctx, p, "attempt interrupted before its ciphertext was sealed"); aerr != nil {
				return resBackoff, aerr
			}
		}
	}
	return d.vault(ctx, it, snap)
}

// adoptSameContent finds the recorded version a metadata change (chmod,
// chown, a link added and removed: only the ctime differs) made unknown to
// the state database, and carries it over to snap, so that an archive
// already sealed, uploaded, proven or pinned is not vaulted a second time.
// The ctime is part of a version's key because, unlike the mtime, no one
// can set it: so the content is proven unchanged by reading the file
// once and comparing its SHA-256 with the recorded plaintext digest. It
// returns nil when no such version exists or the content differs.
func (d *Daemon) adoptSameContent(ctx context.Context, it *item, snap admit.Snapshot) (*Progress, error) {
	if snap.Nlink != 1 {
		return nil, nil
	}
	ps, err := d.state.unfinishedOf(it.name)
	if err != nil {
		return nil, &failure{"state-db", err}
	}
	for _, q := range ps {
		switch q.Stage {
		case StageSealed, StageUploaded, StageProven, StagePinned:
		default:
			continue
		}
		if !snap.Same(q.Snapshot()) || q.PlaintextSHA256 == "" {
			continue
		}
		c, err := admit.Open(it.dir, it.name, d.owner, snap.Ino)
		if err != nil {
			return nil, nil // not readable now: the pipeline's own admission decides
		}
		h := sha256.New()
		_, err = io.Copy(h, ctxio.Reader(ctx, c.Reader()))
		if err == nil {
			err = c.Recheck()
		}
		c.Close()
		if err != nil || hex.EncodeToString(h.Sum(nil)) != q.PlaintextSHA256 {
			return nil, nil
		}
		old := *q
		q.Ctime = snap.Ctime.UnixNano()
		if err := d.state.Put(q); err != nil {
			return nil, &failure{"state-db", err}
		}
		if err := d.state.Delete(&old); err != nil {
			return nil, &failure{"state-db", err}
		}
		d.log.Info("metadata changed, content unchanged: carried over", "file", it.name, "object", q.Object, "stage", q.Stage)
		return q, nil
	}
	return nil, nil
}

// reject records that a file version is not vaulted, once: the stored stage
// keeps later scans from auditing it again. The objects of attempt (nil when
// nothing was uploaded) are withdrawn; any the store keeps (Object Lock) are
// named in the record as orphans.
func (d *Daemon) reject(ctx context.Context, name string, snap admit.Snapshot, r admit.Reason, cause error, attempt *Progress) (result, error) {
	detail := map[string]string{"reason": string(r), "error": cause.Error(),
		"size": strconv.FormatInt(snap.Size, 10), "inode": strconv.FormatUint(snap.Ino, 10)}
	if attempt != nil && attempt.Object != "" {
		detail["object"] = attempt.Object
		deleted, kept, err := d.withdraw(ctx, attempt.Object)
		if len(deleted) > 0 {
			detail["withdrawn"] = strings.Join(deleted, ",")
		}
		if len(kept) > 0 {
			detail["orphans"] = strings.Join(kept, ",")
			detail["withdrawError"] = err.Error()
			d.m.orphans.Add(float64(len(kept)))
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

// spoiled reports whether a failed proof shows the attempt's objects gone
// or replaced (rather than the store being unreachable): retrying the proof
// cannot help, the attempt must be abandoned.
func spoiled(err error) bool {
	return errors.Is(err, store.ErrNotExist) || errors.Is(err, store.ErrIncomplete)
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
