// Package chunk defines chunk identity and the stored form of a chunk.
//
// A chunk is one fixed, aligned slice of a disk (the repository's chunk
// size; the last chunk of a disk may be shorter). Its ID is the SHA-256 of
// its bytes. All-zero chunks are never stored. The stored object is a small
// header naming its codec followed by the compressed bytes (zstd or S2), or
// the raw bytes when compression would not save anything. Each chunk names
// its own codec, so the default can change without rewriting anything.
package chunk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// ID identifies a chunk by content. The zero value stands for an all-zero
// chunk in manifests (no real chunk hashes to it).
type ID [32]byte

// Zero is the manifest entry for an all-zero chunk.
var Zero ID

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id stands for an all-zero chunk.
func (id ID) IsZero() bool { return id == Zero }

// ParseID parses a hex chunk id.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("chunk id %q: want 64 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("chunk id %q: %w", s, err)
	}
	return id, nil
}

// Hash computes the id of data.
func Hash(data []byte) ID { return sha256.Sum256(data) }

var zeroBlock [64 << 10]byte

// AllZero reports whether data holds only zero bytes.
func AllZero(data []byte) bool {
	for len(data) > 0 {
		n := min(len(data), len(zeroBlock))
		if !bytes.Equal(data[:n], zeroBlock[:n]) {
			return false
		}
		data = data[n:]
	}
	return true
}

// ErrCorrupt is wrapped by every error about a stored chunk that does not
// decode to bytes matching its id.
var ErrCorrupt = errors.New("corrupt chunk")

const (
	magic      = "STC1"
	headerSize = 4 + 1 + 4
	codecRaw   = 0
	codecZstd  = 1
	codecS2    = 2
)

// Codec is the compression a chunk is stored with.
type Codec byte

const (
	// Raw stores the bytes as they are.
	Raw Codec = codecRaw
	// Zstd is zstd at its fastest level: the smallest output, about a
	// third of S2's speed (make bench-peers, README "Compression").
	Zstd Codec = codecZstd
	// S2 (klauspost/compress, an LZ4-class format) compresses 2.4–2.6×
	// faster than zstd's fastest level and gives up on incompressible
	// data early; its output is 3–25 % larger.
	S2 Codec = codecS2
	// ZstdBetter stores zstd (chunks name it zstd: any decoder reads it)
	// at a stronger level, for rewriting chunks in the background
	// (strata gc --recompress) where speed matters less than size. Not a
	// codec of its own in stored chunks.
	ZstdBetter Codec = 0x10 | codecZstd
)

// ParseCodec reads a codec name: zstd, s2 or none.
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "zstd":
		return Zstd, nil
	case "s2":
		return S2, nil
	case "none":
		return Raw, nil
	}
	return 0, fmt.Errorf("compression %q: want zstd, s2 or none", s)
}

func (c Codec) String() string {
	switch c {
	case Zstd:
		return "zstd"
	case S2:
		return "s2"
	case Raw:
		return "none"
	case ZstdBetter:
		return "zstd-better"
	}
	return fmt.Sprintf("codec(%d)", byte(c))
}

var (
	encoderOnce sync.Once
	encoder     *zstd.Encoder
	decoder     *zstd.Decoder
)

var (
	betterOnce sync.Once
	better     *zstd.Encoder
)

// betterEncoder is ZstdBetter's, made on first use (its window and tables
// cost memory a worker that never rewrites should not pay).
func betterEncoder() *zstd.Encoder {
	betterOnce.Do(func() {
		better, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
	})
	return better
}

func codecs() (*zstd.Encoder, *zstd.Decoder) {
	encoderOnce.Do(func() {
		// EncodeAll/DecodeAll are safe for concurrent use on one instance,
		// but run at most the encoder concurrency at once: one would make
		// every upload of a worker queue behind a single compressor
		// (BenchmarkEncodeParallel: 4.7 → 8.0 GB/s on 2 cores).
		encoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
		decoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(64<<20))
	})
	return encoder, decoder
}

// Encode produces the stored form of data with zstd.
func Encode(data []byte) []byte { return AppendEncode(nil, data, Zstd) }

// MaxStoredLen bounds the stored form of n bytes (header and the worst
// case of every codec): room that AppendEncode fills without allocating.
// zstd's bound is a few bytes above S2's: without it every incompressible
// chunk made zstd allocate and copy a buffer of its own (a third of a
// 256 KiB chunk's encoding time, and 48 MB of fresh memory per 48 MB of
// new data in a dirty-bitmap incremental).
func MaxStoredLen(n int) int {
	enc, _ := codecs()
	return headerSize + max(s2.MaxEncodedLen(n), enc.MaxEncodedSize(n), n)
}

// AppendEncode appends the stored form of data, compressed with c, to dst
// and returns it: a caller that reuses dst spares an allocation (and its
// zeroing) per chunk. Compression gives up when it would save less than
// 1/32 of the bytes (already-compressed or encrypted data): storing raw
// then costs nothing to read back.
func AppendEncode(dst, data []byte, c Codec) []byte {
	base := len(dst)
	dst = append(dst, magic...)
	dst = append(dst, byte(codecRaw), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[base+5:base+9], uint32(len(data)))
	var compressed []byte
	switch c {
	case Zstd:
		enc, _ := codecs()
		compressed = enc.EncodeAll(data, dst)
	case ZstdBetter:
		compressed = betterEncoder().EncodeAll(data, dst)
		c = Zstd
	case S2:
		// s2.Encode writes into the spare capacity when there is enough.
		need := base + headerSize + s2.MaxEncodedLen(len(data))
		if cap(dst) < need {
			dst = append(make([]byte, 0, need), dst...)
		}
		enc := s2.Encode(dst[base+headerSize:cap(dst)], data)
		compressed = dst[:base+headerSize+len(enc)]
	}
	if compressed != nil && len(compressed)-base-headerSize < len(data)-len(data)/32 {
		compressed[base+4] = byte(c)
		return compressed
	}
	dst = append(dst[:base+headerSize], data...)
	dst[base+4] = codecRaw
	return dst
}

// StoredCodec is the codec a stored chunk (unsealed) names in its header.
func StoredCodec(obj []byte) (Codec, bool) {
	if len(obj) < headerSize || string(obj[:4]) != magic {
		return 0, false
	}
	return Codec(obj[4]), true
}

// Decode turns a stored chunk back into its bytes and checks them against
// id. Any mismatch is an error wrapping ErrCorrupt; wrong bytes are never
// returned.
func Decode(obj []byte, id ID) ([]byte, error) { return DecodeWith(obj, id, Hash) }

// DecodeWith is Decode for a repository whose ids come from another hash
// (keyed ids of an encrypted repository).
func DecodeWith(obj []byte, id ID, hash func([]byte) ID) ([]byte, error) {
	if len(obj) < headerSize || string(obj[:4]) != magic {
		return nil, fmt.Errorf("%w %s: bad header", ErrCorrupt, id)
	}
	size := int(binary.BigEndian.Uint32(obj[5:9]))
	if size > 16<<20 {
		return nil, fmt.Errorf("%w %s: size %d exceeds 16 MiB", ErrCorrupt, id, size)
	}
	var data []byte
	switch obj[4] {
	case codecRaw:
		data = obj[headerSize:]
	case codecZstd:
		_, dec := codecs()
		var err error
		data, err = dec.DecodeAll(obj[headerSize:], make([]byte, 0, size))
		if err != nil {
			return nil, fmt.Errorf("%w %s: decompress: %v", ErrCorrupt, id, err)
		}
	case codecS2:
		// The declared length is checked before decoding: a corrupt header
		// must not make us allocate what it claims.
		n, err := s2.DecodedLen(obj[headerSize:])
		if err != nil || n != size {
			return nil, fmt.Errorf("%w %s: s2 length %d, header says %d (%v)", ErrCorrupt, id, n, size, err)
		}
		data, err = s2.Decode(make([]byte, size), obj[headerSize:])
		if err != nil {
			return nil, fmt.Errorf("%w %s: decompress: %v", ErrCorrupt, id, err)
		}
	default:
		return nil, fmt.Errorf("%w %s: unknown codec %d", ErrCorrupt, id, obj[4])
	}
	if len(data) != size {
		return nil, fmt.Errorf("%w %s: %d bytes, header says %d", ErrCorrupt, id, len(data), size)
	}
	if hash(data) != id {
		return nil, fmt.Errorf("%w %s: content does not match its id", ErrCorrupt, id)
	}
	return data, nil
}
