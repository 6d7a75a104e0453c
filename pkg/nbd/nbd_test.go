package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
)

// Against real qemu-nbd: reads equal the image's raw bytes; base:allocation
// reports the written ranges as data and the rest as holes; the dirty
// bitmap reports exactly the writes made after it was added.
func TestAgainstQemuNBD(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "d.qcow2")
	testserver.Qemu(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	testserver.Qemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 1M 2M", img)
	testserver.Qemu(t, "qemu-img", "bitmap", "--add", img, "b1")
	testserver.Qemu(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 8M 64k", "-c", "write -P 0x33 40M 128k", img)
	raw := filepath.Join(dir, "d.raw")
	testserver.Qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, raw)
	want, _ := os.ReadFile(raw)

	addr, _ := testserver.QemuNBD(t, img, "qcow2", "b1")
	c, err := Dial(addr, "disk", "base:allocation", "qemu:dirty-bitmap:b1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != 64<<20 {
		t.Fatalf("size %d", c.Size())
	}
	got := make([]byte, c.Size())
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("NBD read differs from qemu-img convert output")
	}
	// A read of pieces in flight at once, none aligned to them.
	part := make([]byte, 9<<20+4321)
	if _, err := c.ReadAt(part, 1<<20+123); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(part, want[1<<20+123:][:len(part)]) {
		t.Fatal("unaligned NBD read differs")
	}

	data := walk(t, c, "base:allocation", func(f uint32) bool { return f&StateHole == 0 })
	if data < 2<<20+64<<10+128<<10 || data > 4<<20 {
		t.Fatalf("base:allocation reports %d data bytes; written: %d", data, 2<<20+192<<10)
	}
	dirty := walk(t, c, "qemu:dirty-bitmap:b1", func(f uint32) bool { return f&StateDirty != 0 })
	if dirty != 192<<10 {
		t.Fatalf("dirty bitmap reports %d bytes, the writes after it cover %d", dirty, 192<<10)
	}
	if _, err := c.ReadAt(make([]byte, 10), c.Size()-5); err == nil {
		t.Fatal("read beyond the export accepted")
	}
	if _, err := Dial(addr, "no-such-export"); err == nil {
		t.Fatal("unknown export accepted")
	}
}

func walk(t *testing.T, c *Conn, ctx string, count func(uint32) bool) int64 {
	var n int64
	for off := int64(0); off < c.Size(); {
		ext, err := c.BlockStatus(ctx, off, uint32(min(c.Size()-off, 1<<30)))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ext {
			if count(e.Flags) {
				n += int64(e.Length)
			}
			off += int64(e.Length)
		}
	}
	return n
}

type scriptConn struct{ net.Conn }

func (scriptConn) Write(p []byte) (int, error) { return len(p), nil }
func (scriptConn) Close() error                { return nil }
func (scriptConn) SetDeadline(time.Time) error { return nil }

// FuzzReplies: any byte stream from a server yields data or an error,
// never a panic, a hang or a read outside the buffer.
func FuzzReplies(f *testing.F) {
	ok := binary.BigEndian.AppendUint32(nil, structuredMagic)
	ok = binary.BigEndian.AppendUint16(ok, replyFlagDone)
	ok = binary.BigEndian.AppendUint16(ok, replyOffsetData)
	ok = binary.BigEndian.AppendUint64(ok, 1)
	ok = binary.BigEndian.AppendUint32(ok, 8+16)
	ok = binary.BigEndian.AppendUint64(ok, 0)
	ok = append(ok, bytes.Repeat([]byte{7}, 16)...)
	f.Add(ok)
	bs := binary.BigEndian.AppendUint32(nil, structuredMagic)
	bs = binary.BigEndian.AppendUint16(bs, replyFlagDone)
	bs = binary.BigEndian.AppendUint16(bs, replyBlockStatus)
	bs = binary.BigEndian.AppendUint64(bs, 2)
	bs = binary.BigEndian.AppendUint32(bs, 12)
	bs = binary.BigEndian.AppendUint32(bs, 1)
	bs = binary.BigEndian.AppendUint32(bs, 4096)
	bs = binary.BigEndian.AppendUint32(bs, 1)
	f.Add(append(ok, bs...))
	f.Fuzz(func(t *testing.T, stream []byte) {
		c := &Conn{c: scriptConn{}, r: bufio.NewReader(bytes.NewReader(stream)), size: 1 << 20, contexts: map[string]uint32{"base:allocation": 1}}
		buf := make([]byte, 16)
		c.ReadAt(buf, 0)
		c.BlockStatus("base:allocation", 0, 4096)
	})
}

// A structured read reply lands in the caller's buffer, and a chunk that
// claims bytes outside the request is refused before anything is read
// into it.
func TestOffsetDataInPlace(t *testing.T) {
	reply := func(at uint64, data []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, structuredMagic)
		b = binary.BigEndian.AppendUint16(b, replyFlagDone)
		b = binary.BigEndian.AppendUint16(b, replyOffsetData)
		b = binary.BigEndian.AppendUint64(b, 1)
		b = binary.BigEndian.AppendUint32(b, uint32(8+len(data)))
		b = binary.BigEndian.AppendUint64(b, at)
		return append(b, data...)
	}
	conn := func(stream []byte) *Conn {
		return &Conn{c: scriptConn{}, r: bufio.NewReader(bytes.NewReader(stream)), size: 1 << 20}
	}
	buf := make([]byte, 16)
	if _, err := conn(reply(4096, bytes.Repeat([]byte{7}, 16))).ReadAt(buf, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, bytes.Repeat([]byte{7}, 16)) {
		t.Fatalf("read %v", buf)
	}
	clear(buf)
	if _, err := conn(reply(4104, bytes.Repeat([]byte{9}, 16))).ReadAt(buf, 4096); err == nil || !strings.Contains(err.Error(), "outside request") {
		t.Fatalf("chunk past the request: %v", err)
	}
	if !bytes.Equal(buf, make([]byte, 16)) {
		t.Fatalf("buffer written by a refused chunk: %v", buf)
	}
	if _, err := conn(reply(4096, bytes.Repeat([]byte{9}, 8))).ReadAt(buf, 4096); err == nil || !strings.Contains(err.Error(), "covered 8 of 16") {
		t.Fatalf("short cover: %v", err)
	}
}
