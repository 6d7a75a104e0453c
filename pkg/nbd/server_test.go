package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
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
	f.Add(opt(bytes.Clone(hello), optExportName, []byte("disk0")))
	f.Fuzz(func(t *testing.T, stream []byte) {
		srv := &Server{Exports: map[string]ServerExport{"disk0": make(memExport, 1<<20)}, InFlight: 4}
		srv.serveConn(context.Background(), streamConn{bytes.NewReader(stream)})
	})
}
