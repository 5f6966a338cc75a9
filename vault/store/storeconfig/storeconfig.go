// Package storeconfig opens the store a policy.StoreConfig describes: a
// file:// directory (filestore) or an S3 bucket prefix (s3store). It is the
// one place that knows every implementation, so package store itself stays
// free of them.
package storeconfig

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/checkpoint-vault/ckvault/policy"
	"github.com/checkpoint-vault/ckvault/vault/store"
	"github.com/checkpoint-vault/ckvault/vault/store/filestore"
	"github.com/checkpoint-vault/ckvault/vault/store/s3store"
)

// Store is what Open returns: a store that can also check itself at
// start-up and clean up after interrupted uploads.
type Store interface {
	store.Store
	store.Checker
	store.Janitor
}

// Tuning bounds the memory of an S3 store's multipart uploads: each one
// holds PartSize × Concurrency bytes of buffers. Zero values take
// s3store's defaults (16 MiB × 2). A file:// store ignores it. It is a
// property of the program, not of the policy: the node daemon, which must
// stay small, asks for smaller parts than the CLI.
type Tuning struct {
	PartSize    uint64
	Concurrency uint
}

// Open makes the store cfg describes and, when cfg.ObjectLock is set,
// applies its retention to every Put that does not bring its own. It does
// not contact the store; call Check for that (the daemon does at start-up).
func Open(cfg policy.StoreConfig, log *slog.Logger) (Store, error) {
	return OpenTuned(cfg, log, Tuning{})
}

// OpenTuned is Open with upload buffers bounded by t.
func OpenTuned(cfg policy.StoreConfig, log *slog.Logger, t Tuning) (Store, error) {
	var lock *store.Retention
	if ol := cfg.ObjectLock; ol != nil {
		mode := strings.ToLower(ol.Mode)
		if mode != "compliance" && mode != "governance" {
			return nil, fmt.Errorf("store.objectLock.mode %q: want compliance or governance: %w", ol.Mode, store.ErrPermanent)
		}
		if ol.Days <= 0 {
			return nil, fmt.Errorf("store.objectLock.days %d: want a positive number of days: %w", ol.Days, store.ErrPermanent)
		}
		lock = &store.Retention{Mode: mode, LegalHold: ol.LegalHold}
	}
	var s Store
	switch {
	case strings.HasPrefix(cfg.URL, "file://"):
		u, err := url.Parse(cfg.URL)
		if err != nil || u.Host != "" || u.Path == "" {
			return nil, fmt.Errorf("store url %q: want file:///ABSOLUTE/PATH: %w", cfg.URL, store.ErrPermanent)
		}
		fs, err := filestore.New(u.Path)
		if err != nil {
			return nil, err
		}
		s = fs
	case strings.HasPrefix(cfg.URL, "https://"), strings.HasPrefix(cfg.URL, "http://"):
		ss, err := s3store.New(s3store.Config{
			URL:               cfg.URL,
			Region:            cfg.Region,
			PathStyle:         cfg.PathStyle,
			CAFile:            cfg.CAFile,
			ClientCert:        cfg.ClientCert,
			ClientKey:         cfg.ClientKey,
			AccessKeyFile:     cfg.AccessKeyFile,
			SecretKeyFile:     cfg.SecretKeyFile,
			Insecure:          cfg.Insecure,
			RequireObjectLock: lock != nil,
			PartSize:          t.PartSize,
			Concurrency:       t.Concurrency,
			Logger:            log,
		})
		if err != nil {
			return nil, err
		}
		s = ss
	case cfg.URL == "":
		return nil, fmt.Errorf("store.url is not set (https://HOST[:PORT]/BUCKET[/PREFIX] or file:///PATH): %w", store.ErrPermanent)
	default:
		return nil, fmt.Errorf("store url %q: unknown scheme (want https:// or file://): %w", cfg.URL, store.ErrPermanent)
	}
	if lock == nil {
		return s, nil
	}
	return &retained{Store: s, lock: *lock, days: cfg.ObjectLock.Days, now: time.Now}, nil
}

// retained applies the configured retention to Puts that bring none.
type retained struct {
	Store
	lock store.Retention
	days int
	now  func() time.Time
}

func (r *retained) Put(ctx context.Context, key string, rd io.Reader, size int64, opts store.PutOptions) (store.ObjectInfo, error) {
	if opts.Retention.Mode == "" {
		opts.Retention.Mode = r.lock.Mode
		opts.Retention.Until = r.now().Add(time.Duration(r.days) * 24 * time.Hour).UTC().Truncate(time.Second)
		opts.Retention.LegalHold = opts.Retention.LegalHold || r.lock.LegalHold
	}
	return r.Store.Put(ctx, key, rd, size, opts)
}
