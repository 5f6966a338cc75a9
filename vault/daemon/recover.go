package daemon

import (
	"context"
	"fmt"

	"github.com/checkpoint-vault/ckvault/audit"
	"github.com/checkpoint-vault/ckvault/vault/admit"
	"github.com/checkpoint-vault/ckvault/vault/shred"
)

// settleShreds finishes, at start-up, the shreds a crash interrupted after
// the archive had left its name (claimed: renamed to its debris name, or
// already unlinked) before the "shredded" result was recorded. Such a
// version has no file at its name for the watcher to find, so without
// this pass it would stay in the shredding stage forever, with an intent
// in the audit trail and no result, and its debris would keep plaintext
// on the node. Versions still at their name are left to the normal path
// (process, then finish), which claims and destroys them.
//
// Then any debris that no version claims (its record was pruned or lost)
// is destroyed too: a debris name is only ever given to a proven archive
// (see shredstage.go), and the directory is writable by its owner only.
func (d *Daemon) settleShreds(ctx context.Context, dir *admit.DirRef) error {
	all, err := d.state.All()
	if err != nil {
		return fmt.Errorf("reading the state database: %w", err)
	}
	known := map[string]bool{}
	for i := range all {
		p := &all[i]
		if p.Stage != StageShredding {
			continue
		}
		known[debrisOf(p)] = true
		if cur, err := admit.Stat(dir, p.Name); err == nil && cur.Same(p.Snapshot()) {
			continue // still here: process() resumes it
		}
		if err := d.settleShred(ctx, dir, p); err != nil {
			return err
		}
	}
	names, err := dir.Names()
	if err != nil {
		return fmt.Errorf("listing %s for shred debris: %w", d.cfg.CheckpointsDir, err)
	}
	for _, name := range names {
		if !shred.IsDebris(name) || known[name] {
			continue
		}
		if err := d.destroyOrphanDebris(ctx, dir, name); err != nil {
			d.log.Warn("could not destroy shred debris", "dir", d.cfg.CheckpointsDir, "debris", name, "err", err)
		}
	}
	return nil
}

// destroyOrphanDebris destroys debris no version in the state database
// accounts for, recording it under the debris name (the archive's name is
// not known any more).
func (d *Daemon) destroyOrphanDebris(ctx context.Context, dir *admit.DirRef, name string) error {
	deb, err := shred.OpenDebris(dir, name)
	if err != nil {
		return err
	}
	defer deb.Close()
	return d.audit.Do(ctx, audit.Record{Actor: "daemon", Action: "shredded", Subject: name, Outcome: audit.OK,
		Detail: map[string]string{"recovered": "shred debris without a progress record: destroyed"}},
		func(context.Context) error {
			_, err := deb.Destroy(d.cfg.Daemon.ShredPasses)
			return err
		})
}
