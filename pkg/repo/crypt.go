package repo

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/strata-backup/strata/pkg/chunk"
	"github.com/strata-backup/strata/pkg/manifest"
)

// Keys encrypt a repository (STRATA_ENCRYPTION_KEY_FILE). From one 256-bit
// master key come three independent values: an AES-256-GCM key for chunks
// and manifests, an HMAC key for chunk ids — so object names say nothing
// about content an attacker could hash — and a key check stored in the
// repository config, which tells a wrong key from a corrupt object before
// anything is written.
type Keys struct {
	aead    cipher.AEAD
	idKey   []byte
	nameKey []byte // VM names in object keys (NameInKey)
	check   string
}

// ErrWrongKey: the key does not open this repository.
var ErrWrongKey = errors.New("wrong encryption key")

// LoadKeyFile reads a 32-byte key, as 64 hex digits or base64 (surrounding
// whitespace ignored), e.g. `openssl rand -hex 32 > strata.key`.
func LoadKeyFile(path string) (*Keys, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("encryption key file: %w", err)
	}
	text := string(bytes.TrimSpace(raw))
	master, err := hex.DecodeString(text)
	if err != nil || len(master) != 32 {
		master, err = base64.StdEncoding.DecodeString(text)
	}
	if err != nil || len(master) != 32 {
		return nil, fmt.Errorf("encryption key file %s: want 32 bytes as 64 hex digits or base64", path)
	}
	return NewKeys(master)
}

// NewKeys derives the repository keys from a 32-byte master key.
func NewKeys(master []byte) (*Keys, error) {
	derive := func(label string) []byte {
		m := hmac.New(sha256.New, master)
		m.Write([]byte("strata v1 " + label))
		return m.Sum(nil)
	}
	block, err := aes.NewCipher(derive("encryption"))
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Keys{aead: aead, idKey: derive("chunk id"), nameKey: derive("name in key"), check: hex.EncodeToString(derive("key check"))}, nil
}

// ChunkID is the keyed id of a chunk's bytes.
func (k *Keys) ChunkID(data []byte) chunk.ID {
	m := hmac.New(sha256.New, k.idKey)
	m.Write(data)
	var id chunk.ID
	copy(id[:], m.Sum(nil))
	return id
}

// nameInKey is how a VM name appears in an encrypted repository's object
// keys: a keyed hash, so that the bucket's listing does not name the VMs.
func (k *Keys) nameInKey(name string) string {
	m := hmac.New(sha256.New, k.nameKey)
	m.Write([]byte(name))
	return "h-" + hex.EncodeToString(m.Sum(nil)[:16])
}

const sealedMagic = "STE1"

// seal encrypts plain, bound to the object's identity (ad): a sealed
// object moved under another name does not open.
func (k *Keys) seal(plain, ad []byte) []byte {
	out := make([]byte, len(sealedMagic)+k.aead.NonceSize(), len(sealedMagic)+k.aead.NonceSize()+len(plain)+k.aead.Overhead())
	copy(out, sealedMagic)
	if _, err := rand.Read(out[len(sealedMagic):]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return k.aead.Seal(out, out[len(sealedMagic):], plain, ad)
}

func (k *Keys) overhead() int {
	return len(sealedMagic) + k.aead.NonceSize() + k.aead.Overhead()
}

// open decrypts a sealed object, sealed whole or as a stream; any
// tampering is an error.
func (k *Keys) open(obj, ad []byte) ([]byte, error) {
	if bytes.HasPrefix(obj, []byte(streamMagic)) {
		var plain bytes.Buffer
		err := k.openStream(&plain, bytes.NewReader(obj), int64(len(obj)), ad)
		return plain.Bytes(), err
	}
	head := len(sealedMagic) + k.aead.NonceSize()
	if len(obj) < head+k.aead.Overhead() || string(obj[:len(sealedMagic)]) != sealedMagic {
		return nil, errors.New("not an encrypted object")
	}
	plain, err := k.aead.Open(nil, obj[len(sealedMagic):head], obj[head:], ad)
	if err != nil {
		return nil, errors.New("decryption failed (tampered, or sealed under another name)")
	}
	return plain, nil
}

// A manifest too big to seal in memory (a disk holding tens of TiB of
// data) is sealed as a stream instead: "STS1", an 8-byte random nonce
// prefix, then the plaintext in segments of streamSegment bytes, each
// sealed on its own (AES-256-GCM, the object's key as associated data)
// under the prefix, its index and — for the last one only — a final flag,
// so a reordered, dropped or truncated segment does not open.
const (
	streamMagic   = "STS1"
	streamSegment = 1 << 20
)

func (k *Keys) streamNonce(prefix []byte, i uint32, last bool) []byte {
	n := make([]byte, 12)
	copy(n, prefix)
	if last {
		i |= 1 << 31
	}
	binary.BigEndian.PutUint32(n[8:], i)
	return n
}

// sealStream seals the n bytes of r into w.
func (k *Keys) sealStream(w io.Writer, r io.Reader, n int64, ad []byte) error {
	prefix := make([]byte, 8)
	if _, err := rand.Read(prefix); err != nil {
		panic(err)
	}
	if _, err := w.Write(append([]byte(streamMagic), prefix...)); err != nil {
		return err
	}
	count := max(1, (n+streamSegment-1)/streamSegment)
	if count >= 1<<31 {
		return fmt.Errorf("%d bytes: too big to seal", n)
	}
	buf := make([]byte, streamSegment)
	out := make([]byte, 0, streamSegment+k.aead.Overhead())
	for i := int64(0); i < count; i++ {
		m := min(int64(streamSegment), n-i*streamSegment)
		if _, err := io.ReadFull(r, buf[:m]); err != nil {
			return err
		}
		out = k.aead.Seal(out[:0], k.streamNonce(prefix, uint32(i), i == count-1), buf[:m], ad)
		if _, err := w.Write(out); err != nil {
			return err
		}
	}
	return nil
}

// openStream opens a stream-sealed object of size n read from r into w.
func (k *Keys) openStream(w io.Writer, r io.Reader, n int64, ad []byte) error {
	head := make([]byte, len(streamMagic)+8)
	if _, err := io.ReadFull(r, head); err != nil || string(head[:len(streamMagic)]) != streamMagic {
		return errors.New("not a stream-sealed object")
	}
	prefix := head[len(streamMagic):]
	body := n - int64(len(head))
	full := int64(streamSegment + k.aead.Overhead())
	count := max(1, (body+full-1)/full)
	buf := make([]byte, full)
	plain := make([]byte, 0, streamSegment)
	for i := int64(0); i < count; i++ {
		m := min(full, body-i*full)
		if m < int64(k.aead.Overhead()) {
			return errors.New("stream-sealed object truncated")
		}
		if _, err := io.ReadFull(r, buf[:m]); err != nil {
			return err
		}
		var err error
		plain, err = k.aead.Open(plain[:0], k.streamNonce(prefix, uint32(i), i == count-1), buf[:m], ad)
		if err != nil {
			return errors.New("decryption failed (tampered, truncated, or sealed under another name)")
		}
		if _, err := w.Write(plain); err != nil {
			return err
		}
	}
	return nil
}

// sealFile seals the n bytes of f as a stream into a new temporary file.
func (k *Keys) sealFile(f *os.File, n int64, ad []byte) (*os.File, int64, error) {
	out, err := manifest.TempFile("seal")
	if err != nil {
		return nil, 0, err
	}
	w := bufio.NewWriterSize(out, 1<<20)
	return finishFile(out, w, k.sealStream(w, io.NewSectionReader(f, 0, n), n, ad))
}

// openFile opens the n sealed bytes of f into a new temporary file: a
// stream piece by piece, an object sealed whole (written before streams)
// in memory.
func (k *Keys) openFile(f *os.File, n int64, ad []byte) (*os.File, int64, error) {
	out, err := manifest.TempFile("open")
	if err != nil {
		return nil, 0, err
	}
	head := make([]byte, len(streamMagic))
	f.ReadAt(head, 0)
	w := bufio.NewWriterSize(out, 1<<20)
	if string(head) == streamMagic {
		err = k.openStream(w, bufio.NewReaderSize(io.NewSectionReader(f, 0, n), 1<<20), n, ad)
	} else {
		b := make([]byte, n)
		if _, err = f.ReadAt(b, 0); err == nil {
			if b, err = k.open(b, ad); err == nil {
				_, err = w.Write(b)
			}
		}
	}
	return finishFile(out, w, err)
}

// finishFile ends writing a temporary file through w: flushed, its size
// known; on any error (err included) closed (it is unlinked already).
func finishFile(out *os.File, w *bufio.Writer, err error) (*os.File, int64, error) {
	if err == nil {
		err = w.Flush()
	}
	var size int64
	if err == nil {
		size, err = out.Seek(0, io.SeekEnd)
	}
	if err != nil {
		out.Close()
		return nil, 0, err
	}
	return out, size, nil
}
