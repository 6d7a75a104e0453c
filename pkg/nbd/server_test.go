package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/strata-backup/strata/internal/testserver"
)

// memExport is an export of bytes in memory.
type memExport []byte

func (m memExport) Size() int64 { return int64(len(m)) }
func (m memExport) ReadAt(_ context.Context, p []byte, off int64) error {
	copy(p, m[off:])
	return nil
}
func (m memExport) Extents(off, length int64) []Extent {
	return []Extent{{Length: uint32(length), Flags: 0}}
}

// streamConn is a connection whose client side is a fixed byte stream;
// what the server writes is dropped.
type streamConn struct{ r io.Reader }

func (c streamConn) Read(p []byte) (int, error)     { return c.r.Read(p) }
func (streamConn) Write(p []byte) (int, error)      { return len(p), nil }
func (streamConn) Close() error                     { return nil }
func (streamConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (streamConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (streamConn) SetDeadline(time.Time) error      { return nil }
func (streamConn) SetReadDeadline(time.Time) error  { return nil }
func (streamConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzServerConn: whatever a client sends — options, requests, lengths —
// the server answers or hangs up, never panics or reads outside an export.
func FuzzServerConn(f *testing.F) {
	hello := binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes)
	opt := func(b []byte, o uint32, data []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, optMagic)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	req := func(b []byte, typ uint16, off uint64, n uint32) []byte {
		b = binary.BigEndian.AppendUint32(b, requestMagic)
		b = binary.BigEndian.AppendUint16(b, 0)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint64(b, 7)
		b = binary.BigEndian.AppendUint64(b, off)
		return binary.BigEndian.AppendUint32(b, n)
	}
	name := append(binary.BigEndian.AppendUint32(nil, 5), "disk0"...)
	s := opt(bytes.Clone(hello), optStructured, nil)
	meta := append(bytes.Clone(name), 0, 0, 0, 1, 0, 0, 0, 15)
	s = opt(s, optSetMetaContext, append(meta, "base:allocation"...))
	s = opt(s, optGo, append(bytes.Clone(name), 0, 0))
	s = req(s, cmdRead, 100, 5000)
	s = req(s, cmdBlockStatus, 0, 1<<20)
	s = req(s, cmdRead, 1<<20-10, 100)
	f.Add(s)
	w := req(bytes.Clone(s), cmdWrite, 4096, 8)
	w = append(w, "12345678"...)
	w = req(w, cmdWriteZeroes, 0, 1<<20)
	f.Add(req(w, cmdFlush, 0, 0))
	f.Add(opt(bytes.Clone(hello), optExportName, []byte("disk0")))
	f.Add(bytes.Replace(w, []byte("\x00\x00\x00\x05disk0"), []byte("\x00\x00\x00\x02rw"), -1))
	f.Fuzz(func(t *testing.T, stream []byte) {
		srv := &Server{Exports: map[string]ServerExport{"disk0": make(memExport, 1<<20), "rw": &memDisk{b: make([]byte, 1<<20)}}, InFlight: 4}
		srv.serveConn(context.Background(), streamConn{bytes.NewReader(stream)})
	})
}

// memDisk is a writable export in memory.
type memDisk struct {
	mu      sync.Mutex
	b       []byte
	flushes int
}

func (m *memDisk) Size() int64 { return int64(len(m.b)) }
func (m *memDisk) ReadAt(_ context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.b[off:])
	return nil
}
func (m *memDisk) Extents(off, length int64) []Extent {
	return []Extent{{Length: uint32(min(length, 1<<30)), Flags: 0}}
}
func (m *memDisk) WriteAt(_ context.Context, p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.b[off:], p)
	return nil
}
func (m *memDisk) Zero(_ context.Context, off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.b[off : off+n])
	return nil
}
func (m *memDisk) Flush(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	return nil
}

// Real qemu-io writes, zeroes, discards and flushes a writable export and
// reads its writes back; a read-only export beside it refuses writes.
func TestServerWritesFromQemuIO(t *testing.T) {
	disk := &memDisk{b: bytes.Repeat([]byte{0x5a}, 4<<20)}
	srv := &Server{Exports: map[string]ServerExport{"rw": disk, "ro": memExport(make([]byte, 1<<20))}, InFlight: 4}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(ctx, l)
	url := "nbd://" + l.Addr().String() + "/"
	testserver.Qemu(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 1000 70000",
		"-c", "write -z 1M 64k",
		"-c", "discard 2M 128k",
		"-c", "write -P 0xcd -f 3M 4096", // FUA
		"-c", "flush",
		"-c", "read -P 0xab 1000 70000",
		"-c", "read -P 0 1M 64k",
		url+"rw")
	want := bytes.Repeat([]byte{0x5a}, 4<<20)
	copy(want[1000:], bytes.Repeat([]byte{0xab}, 70000))
	clear(want[1<<20 : 1<<20+64<<10])
	clear(want[2<<20 : 2<<20+128<<10])
	copy(want[3<<20:], bytes.Repeat([]byte{0xcd}, 4096))
	disk.mu.Lock()
	defer disk.mu.Unlock()
	if !bytes.Equal(disk.b, want) {
		t.Fatal("the export's bytes are not the writes qemu-io made")
	}
	if disk.flushes < 2 {
		t.Fatalf("%d flushes for a FUA write and a flush", disk.flushes)
	}
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 1 0 4096", url+"ro").CombinedOutput()
	if err == nil && !bytes.Contains(out, []byte("ermission")) && !bytes.Contains(out, []byte("read-only")) && !bytes.Contains(out, []byte("read only")) {
		t.Fatalf("a write to a read-only export: %s", out)
	}
}
