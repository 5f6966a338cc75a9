package daemon

// The shred stage: destroying the local copy of a proven archive, and
// resuming a shred a crash interrupted.

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"strconv"
	"time"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/shred"
	"github.com/checkpoint-vault/ckvault/vault/watch"
)

// resumeShred finishes a shred that a crash interrupted after the overwrite
// had begun (which changed the file's mtime, so it no longer matches the
// version that was proven). It is resumed only if the file is, beyond doubt,
// our own debris: the same inode, no larger, no writer (admission's lease),
// and its first block no longer a tar header (the overwrite starts at
// offset 0 with random bytes). A tar header there means a runtime wrote a new
// archive into the name: that is vaulted like any other.
func (d *Daemon) resumeShred(ctx context.Context, it *item, prev *Progress, snap admit.Snapshot) (result, error) {
	c, err := admit.Open(d.dir, it.name, d.owner, snap.Ino)
	if err != nil {
		if admit.ReasonOf(err).Transient() {
			return resPoll, nil
		}
		return d.vault(ctx, it, snap)
	}
	var hdr [512]byte
	n, _ := c.File.ReadAt(hdr[:], 0)
	_, herr := tar.NewReader(bytes.NewReader(hdr[:n])).Next()
	cur := c.Snapshot
	c.Close()
	if n == len(hdr) && herr == nil {
		return d.vault(ctx, it, snap)
	}
	p := *prev
	p.Mtime, p.Ctime, p.Size = cur.Mtime.UnixNano(), cur.Ctime.UnixNano(), cur.Size
	d.log.Info("resuming a shred interrupted by a restart", "file", it.name, "object", p.Object)
	res, err := d.finish(ctx, &p)
	if err == nil && p.Stage == StageShredded {
		// The interrupted version is finished by its successor record;
		// close it too, so no version stays in shredding.
		prev.Stage, prev.Reason = StageShredded, "completed after restart as the overwritten version"
		if err := d.state.Put(prev); err != nil {
			return resBackoff, &failure{"state-db", err}
		}
	}
	return res, err
}

// finish destroys the local copy of a proven archive, unless it is pinned.
func (d *Daemon) finish(ctx context.Context, p *Progress) (result, error) {
	if watch.IsPinned(d.dir, p.Name) {
		if p.Stage != StagePinned {
			if err := d.record(ctx, audit.Record{Action: "pinned", Subject: p.Name, Namespace: p.Namespace, Pod: p.Pod,
				Container: p.Container, Outcome: audit.OK, Detail: map[string]string{"object": p.Object,
					"pin": p.Name + watch.PinSuffix}}); err != nil {
				return resBackoff, &failure{"audit", err}
			}
			reached(string(p.Stage)+"/pinned-audited", p)
			p.Stage = StagePinned
			if err := d.state.Put(p); err != nil {
				return resBackoff, &failure{"state-db", err}
			}
			reached("pinned", p)
			d.notify()
		}
		return resDone, nil
	}
	t := time.Now()
	fsName, bestEffort, why, _ := shred.Filesystem(int(d.dir.Fd()))
	detail := map[string]string{"object": p.Object, "filesystem": fsName,
		"bestEffort": strconv.FormatBool(bestEffort), "passes": strconv.Itoa(d.cfg.Daemon.ShredPasses)}
	if bestEffort {
		detail["bestEffortReason"] = why
	}
	p.Stage = StageShredding
	if err := d.state.Put(p); err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	reached("shredding", p)
	var res shred.Result
	err := d.audit.Do(ctx, audit.Record{Actor: "daemon", Action: "shredded", Subject: p.Name, Namespace: p.Namespace,
		Pod: p.Pod, Container: p.Container, Outcome: audit.OK, Detail: detail},
		func(context.Context) error {
			reached("shredding/intent-audited", p)
			var err error
			res, err = shred.Shred(d.dir, p.Name, p.Snapshot(), d.cfg.Daemon.ShredPasses)
			if err == nil {
				reached("shredding/destroyed", p)
			}
			return err
		})
	if err == nil {
		reached("shredding/done-audited", p)
	}
	switch {
	case err == nil:
	case errors.Is(err, shred.ErrChanged) || errors.Is(err, fs.ErrNotExist):
		// Not the file that was sealed any more (rewritten in place, or
		// removed): its sealed version is vaulted; a new version is a new
		// archive. Nothing of the new one is destroyed.
		d.log.Warn("not shredding: file changed or vanished after it was vaulted", "file", p.Name, "object", p.Object, "err", err)
		p.Stage, p.Reason = StageShredded, "superseded: "+err.Error()
		d.state.Put(p)
		return resDone, nil
	default:
		return resBackoff, &failure{"shred", err}
	}
	if res.BestEffort {
		d.log.Warn("shredded on a filesystem where overwriting is best effort", "file", p.Name, "filesystem", res.FSType, "reason", res.Reason)
	}
	p.Stage = StageShredded
	if err := d.state.Put(p); err != nil {
		return resBackoff, &failure{"state-db", err}
	}
	reached("shredded", p)
	d.m.shredded.Inc()
	d.m.stage.WithLabelValues("shred").Observe(time.Since(t).Seconds())
	d.log.Info("vaulted and shredded", "file", p.Name, "object", p.Object, "size", p.Size)
	d.notify()
	return resDone, nil
}
