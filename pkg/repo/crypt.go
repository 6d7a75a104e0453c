package repo

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"github.com/strata-backup/strata/pkg/chunk"
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

// open decrypts a sealed object; any tampering is an error.
func (k *Keys) open(obj, ad []byte) ([]byte, error) {
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
