package s3store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/checkpoint-vault/ckvault/internal/testservers"
	"github.com/checkpoint-vault/ckvault/vault/store"
)

// TestCreateOnlyMultipartRace: a create-only Put (IfAbsent) must never
// replace an object, even one that appears while the Put is under way.
// For a single PUT the server enforces it (If-None-Match: *). For a
// multipart upload the condition has to be on CompleteMultipartUpload —
// that is where S3 and versitygw evaluate it, and MinIO evaluates it there
// too (besides at initiate) — but minio-go v7.4.1 drops every custom
// header on CompleteMultipartUpload (completeUploadOpts), so only the
// client-side Stat before the upload protects the key: an object written
// by someone else between that Stat and the completion is silently
// replaced (hidden behind a newer version on a versioned bucket).
func TestCreateOnlyMultipartRace(t *testing.T) {
	for _, kind := range testservers.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := testservers.Shared(t, kind)
			s := newFor(t, srv, func(c *Config) {
				c.PartSize = 5 << 20
				c.MultipartThreshold = 5 << 20
			})
			ctx := context.Background()
			const key = "race/obj.tar.age"
			const size = 11 << 20
			pr, pw := io.Pipe()
			done := make(chan error, 1)
			go func() {
				_, err := s.Put(ctx, key, pr, size, store.PutOptions{IfAbsent: true})
				done <- err
			}()
			// The upload is initiated and its first part is being read.
			if _, err := pw.Write(make([]byte, 6<<20)); err != nil {
				t.Fatal(err)
			}
			// Someone else creates the key meanwhile.
			theirs := []byte("another writer's object")
			c := srv.Client(t)
			if _, err := c.PutObject(ctx, srv.Bucket, s.fullKey(key), bytes.NewReader(theirs), int64(len(theirs)),
				minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
			if _, err := pw.Write(make([]byte, size-6<<20)); err != nil {
				t.Fatal(err)
			}
			pw.Close()
			err := <-done
			if !errors.Is(err, store.ErrExists) {
				t.Errorf("create-only multipart Put over an object created meanwhile: err = %v, want ErrExists", err)
			}
			o, err := s.Open(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			got, err := io.ReadAll(o)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, theirs) {
				t.Errorf("the other writer's object was replaced by the create-only Put (%d bytes now current)", len(got))
			}
		})
	}
}
