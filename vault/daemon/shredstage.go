package daemon

// The shred stage: destroying the local copy of a proven archive, and
// settling a shred a crash or a failure interrupted.
//
// Destruction has two steps (vault/shred): Claim renames the archive to
// its debris name (derived from the version, see debrisOf) and makes the
// rename durable; Destroy overwrites, truncates and unlinks the debris.
// Nothing is ever overwritten under an archive's own name, so:
//
//   - whatever is found at an archive's name is an archive: a version the
//     state database knows resumes from its stage, any other version —
//     including a new archive a runtime wrote in place of one being
//     shredded — is vaulted like any other;
//   - whatever is found at a version's debris name is that version,
//     claimed after it was proven: it is destroyed (settleShred).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/shred"
	"github.com/checkpoint-vault/ckvault/vault/watch"
)

// finish destroys the local copy of a proven archive, unless it is pinned.
// It takes the checkpoints directory afresh, so what it destroys is in the
// directory the path names now (verified), never in one that was replaced
// or moved away while the archive was sealed.
func (d *Daemon) finish(ctx context.Context, p *Progress) (result, error) {
	dir, err := d.acquireDir(ctx)
	if err != nil {
		return resBackoff, err
	}
	defer dir.Release()
	if watch.IsPinned(dir, p.Name) {
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
	fsName, bestEffort, why, _ := shred.Filesystem(int(dir.Fd()))
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
	err = d.audit.Do(ctx, audit.Record{Actor: "daemon", Action: "shredded", Subject: p.Name, Namespace: p.Namespace,
		Pod: p.Pod, Container: p.Container, Outcome: audit.OK, Detail: detail},
		func(context.Context) error {
			reached("shredding/intent-audited", p)
			deb, err := shred.Claim(dir, p.Name, debrisOf(p), p.Snapshot())
			if err != nil {
				return err
			}
			defer deb.Close()
			reached(ptShredClaimed, p)
			res, err = deb.Destroy(d.cfg.Daemon.ShredPasses)
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

// ptShredClaimed: the archive is renamed to its debris name, durably, and
// nothing is overwritten yet. The crash test also damages the debris there
// ("+overwrite", "+truncate") as a crash inside Destroy would leave it.
const ptShredClaimed = "shredding/claimed"

// ptDebrisDestroyed: settleShred destroyed (and unlinked) the debris of an
// interrupted shred; its "shredded" result and stage are not yet recorded.
const ptDebrisDestroyed = "shredding/debris-destroyed"

// debrisOf is the debris name of p's version: stable across restarts, so
// an interrupted shred finds its debris again.
func debrisOf(p *Progress) string {
	return shred.DebrisName(versionKey(p.Name, p.Snapshot()))
}

// settleName settles every unfinished version of name that the name no
// longer holds (cur is what it holds now, nil if nothing): the file was
// removed, or rewritten in place, while the version was between stages.
// Nothing the watcher sees will bring such a version back, so it is
// finished here, as far as it can be without its file:
//
//   - sealing: its ciphertext may be partly stored and the plaintext is
//     gone: the attempt is abandoned (withdrawn, or its orphans recorded);
//   - sealed, uploaded: everything publication needs is recorded, so it is
//     published and proven from the record;
//   - proven, pinned, shredding: nothing is left to destroy under its name;
//     settleShred destroys its debris if it had been claimed, and closes it.
//
// process calls it on every attempt, before the version at the name.
func (d *Daemon) settleName(ctx context.Context, dir *admit.DirRef, name string, cur *admit.Snapshot) error {
	ps, err := d.state.unfinishedOf(name)
	if err != nil {
		return &failure{"state-db", err}
	}
	for _, p := range ps {
		if cur != nil && cur.Same(p.Snapshot()) {
			continue // still at its name: process resumes it
		}
		if err := d.settleStale(ctx, dir, p); err != nil {
			return err
		}
	}
	return nil
}

// settleStale finishes one version its name no longer holds (see
// settleName).
func (d *Daemon) settleStale(ctx context.Context, dir *admit.DirRef, p *Progress) error {
	switch p.Stage {
	case StageSealing:
		return d.abandon(ctx, p, "the file left its name (removed, or rewritten in place) before its ciphertext was sealed: this version cannot be vaulted")
	case StageSealed, StageUploaded:
		stages := []stage{d.publishStage, d.proveStage}
		if p.Stage == StageUploaded {
			stages = stages[1:]
		}
		res, err := d.run(ctx, &job{p: p}, stages...)
		if p.Stage == StageUploaded && spoiled(err) {
			if aerr := d.abandon(ctx, p, "an object of the uploaded attempt is missing or not what was stored: "+err.Error()); aerr != nil {
				return aerr
			}
			return err
		}
		if err != nil {
			return err
		}
		if res != resDone {
			return fail("publish", "publishing %s from its record did not finish", p.Object)
		}
		d.log.Info("published a sealed version whose file left its name", "file", p.Name, "object", p.Object)
	}
	// Proven (now, or before): close the version. No claim of it was
	// ever made unless it is in the shredding stage; settleShred destroys
	// its debris if there is any and records the version's end.
	return d.settleShred(ctx, dir, p)
}

// settleShred finishes a version whose shred was interrupted (by a crash,
// or a failure after Claim) and whose name no longer holds it. If its
// debris is there it is destroyed now; otherwise the interrupted shred
// had already unlinked it, or its name was rewritten in place before it
// was claimed (the writer truncated the proven content; what is there now
// is a new archive, vaulted on its own). Either way the version was
// proven before its shred began, so closing it destroys nothing that is
// not in the store.
func (d *Daemon) settleShred(ctx context.Context, dir *admit.DirRef, p *Progress) error {
	rec := audit.Record{Actor: "daemon", Action: "shredded", Subject: p.Name, Namespace: p.Namespace, Pod: p.Pod,
		Container: p.Container, Outcome: audit.OK, Detail: map[string]string{"object": p.Object}}
	deb, err := shred.OpenDebris(dir, debrisOf(p))
	switch {
	case err == nil:
		defer deb.Close()
		rec.Detail["recovered"] = "the interrupted shred had claimed it (renamed to its debris name): destroyed now"
		rec.Detail["passes"] = strconv.Itoa(d.cfg.Daemon.ShredPasses)
		var res shred.Result
		err := d.audit.Do(ctx, rec, func(context.Context) error {
			var err error
			res, err = deb.Destroy(d.cfg.Daemon.ShredPasses)
			if err == nil {
				reached(ptDebrisDestroyed, p)
			}
			return err
		})
		if err != nil {
			return &failure{"shred", err}
		}
		if res.BestEffort {
			d.log.Warn("shredded on a filesystem where overwriting is best effort", "file", p.Name, "filesystem", res.FSType, "reason", res.Reason)
		}
		p.Reason = "completed after an interruption: debris destroyed"
		d.m.shredded.Inc()
	case errors.Is(err, fs.ErrNotExist):
		var st admit.Snapshot
		if st, err = admit.Stat(dir, p.Name); err == nil && st.Dev == p.Dev && st.Ino == p.Ino {
			rec.Detail["recovered"] = "the archive was rewritten in place before its shred began; the proven version is in the store and the new content is a new archive"
			p.Reason = "superseded: rewritten in place before it was claimed"
		} else {
			rec.Detail["recovered"] = "no debris and no archive left: an interrupted shred had unlinked it, or it was removed after it was proven"
			p.Reason = "completed after an interruption: already unlinked"
		}
		rec.Detail["phase"] = "done"
		if err := d.record(ctx, rec); err != nil {
			return &failure{"audit", err}
		}
	default:
		return &failure{"shred", fmt.Errorf("settling the interrupted shred of %s: %w", p.Name, err)}
	}
	p.Stage = StageShredded
	if err := d.state.Put(p); err != nil {
		return &failure{"state-db", err}
	}
	d.log.Info("completed a shred interrupted earlier", "file", p.Name, "object", p.Object, "how", rec.Detail["recovered"])
	d.notify()
	return nil
}

// unfinishedOf returns the versions of name that are not in a terminal
// stage.
func (s *stateDB) unfinishedOf(name string) ([]*Progress, error) {
	var out []*Progress
	prefix := append([]byte(name), 0)
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketProgress).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var p Progress
			if err := json.Unmarshal(v, &p); err != nil {
				return err
			}
			if !p.Stage.Terminal() {
				out = append(out, &p)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading progress of %s: %w", name, err)
	}
	return out, nil
}
