// Package envelope is checkpoint-vault's age layer: it parses who may read a
// vaulted checkpoint (recipients), loads the keys that read it back
// (identities), predicts the exact size of an encrypted archive, and
// encrypts and decrypts streams in the age-encryption.org/v1 format with
// filippo.io/age. The output is an ordinary age file: stock `age -d` reads it.
//
// # Recipients
//
// Accepted recipient encodings, as in the age CLI:
//
//   - age1pq1…      hybrid ML-KEM-768 + X25519 (post-quantum; the default of
//     `ckvault keygen` and age's own recommendation)
//   - age1…         X25519 (classic)
//   - age1tag1…     tagged P-256 (classic), age1tagpq1… tagged hybrid (post-quantum)
//   - ssh-ed25519 …, ssh-rsa …  SSH public keys (classic; they leak the key's
//     fingerprint in the file header, so an observer can tell who can read it)
//   - age1<name>1…  plugin recipients, run through the age plugin protocol
//
// One file is either post-quantum or classic: age refuses to add a classic
// stanza to a post-quantum file, because anyone able to break the classic
// stanza (a future quantum computer) would recover the file key. A
// [RecipientSet] enforces the same rule up front with an explanation.
//
// # Plugins
//
// Plugin binaries (age-plugin-<name>) are executed only from an explicitly
// configured directory ([Options.PluginDir], [IdentityOptions.PluginDir]),
// never from the caller's $PATH: the daemon runs as root, and a writable
// directory early in $PATH must not let anyone see file keys. See plugin.go
// for how that is enforced and its one process-wide caveat.
//
// # Sizes
//
// An age file is a header (one stanza per recipient plus a MAC), a 16-byte
// nonce, and the payload in STREAM chunks of 64 KiB of plaintext, each with
// a 16-byte Poly1305 tag. The last chunk may be short; an empty plaintext is
// one empty chunk; a plaintext that is an exact multiple of 64 KiB ends with
// a full chunk (no extra empty one). [RecipientSet.CiphertextSize] is exact,
// which lets uploads declare their size in advance and keep memory bounded.
//
// # Decryption releases plaintext before the end is authenticated
//
// Every chunk is authenticated on its own, and [Decrypt] releases each one as
// soon as it is. A truncated or tampered file therefore yields good-looking
// plaintext first and an error only at the point of damage, possibly at the
// very end. Callers MUST NOT treat, publish or act on any decrypted byte
// until Read has returned io.EOF with no earlier error.
package envelope
