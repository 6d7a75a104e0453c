package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
)

// The server side of the protocol: fixed newstyle handshake, NBD_OPT_GO,
// INFO, LIST, EXPORT_NAME, structured replies and the base:allocation
// meta context, reads and block status. Written here rather than taken
// from a library: the Go NBD servers on the module proxy either lack
// structured replies and block status (without which qemu-img convert
// and nbdcopy read every zero chunk) or are bound to a kernel nbd device;
// the protocol pieces are the same ones the client beside it speaks.

// ServerExport is one disk a Server offers. ReadAt fills p entirely or
// fails (the client then gets EIO, never partial or wrong bytes);
// Extents describes [off, off+length) from off, as runs of data and
// holes (Flags StateHole|StateZero), and may stop short of the end.
// Both are called concurrently.
type ServerExport interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
	Extents(off, length int64) []Extent
}

// WritableExport is an export that takes writes. WriteAt stores p at
// off; Zero makes [off, off+n) read back as zeros (trim and write-zeroes
// alike: the export may free the space); Flush returns once every write
// that returned before it was called is durable, whichever connection
// sent it (which is what makes several connections safe). All are called
// concurrently with each other and with reads.
type WritableExport interface {
	ServerExport
	WriteAt(ctx context.Context, p []byte, off int64) error
	Zero(ctx context.Context, off, n int64) error
	Flush(ctx context.Context) error
}

// Server serves exports by name: read-only, or writable where the
// export is a WritableExport.
type Server struct {
	Exports map[string]ServerExport
	Log     *slog.Logger
	// InFlight bounds the requests one connection has being answered at
	// once (clients such as qemu-img send many before reading a reply).
	InFlight int
}

// Protocol numbers the client does not use (the shared ones are in nbd.go).
const (
	optExportName        = 1
	optAbort             = 2
	optList              = 3
	optStartTLS          = 5
	optInfo              = 6
	optListMetaCtx       = 9
	repServer            = 2
	repErrUnsup          = repErrBit + 1
	repErrPolicy         = repErrBit + 2
	repErrInvalid        = repErrBit + 3
	repErrUnknown        = repErrBit + 6
	infoBlockSize        = 3
	transHasFlags        = 1 << 0
	transReadOnly        = 1 << 1
	transSendFlush       = 1 << 2
	transSendFUA         = 1 << 3
	transSendTrim        = 1 << 5
	transSendWriteZeroes = 1 << 6
	transCanMultiConn    = 1 << 8
	transSendCache       = 1 << 10

	cmdWrite       = 1
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdFlagFUA     = 1 << 0
	cmdFlagReqOne  = 1 << 3
	replyError     = 1<<15 + 1

	errPerm  = 1
	errIO    = 5
	errInval = 22

	// maxServerRead is the largest read or status request answered; the
	// handshake advertises it as the maximum block size.
	maxServerRead = 32 << 20
	allocationCtx = 1 // the id of base:allocation on every connection
)

// Serve accepts connections on l until ctx ends or l fails.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var conns sync.Map
	defer conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
				return nil
			}
			return err
		}
		conns.Store(c, true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conns.Delete(c)
			defer c.Close()
			if err := s.serveConn(ctx, c); err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil {
				s.logger().Warn("nbd connection ended", "remote", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

// srvConn is one client connection.
type srvConn struct {
	c          net.Conn
	wmu        sync.Mutex // replies are written whole, one at a time
	structured bool
	allocation bool // base:allocation was set
	export     ServerExport
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) error {
	sc := &srvConn{c: c}
	hello := binary.BigEndian.AppendUint64(nil, nbdMagic)
	hello = binary.BigEndian.AppendUint64(hello, optMagic)
	hello = binary.BigEndian.AppendUint16(hello, flagFixedNewstyle|flagNoZeroes)
	if _, err := c.Write(hello); err != nil {
		return err
	}
	var clientFlags uint32
	if err := binary.Read(c, binary.BigEndian, &clientFlags); err != nil {
		return err
	}
	if clientFlags&^uint32(flagFixedNewstyle|flagNoZeroes) != 0 || clientFlags&flagFixedNewstyle == 0 {
		return fmt.Errorf("client flags %#x: fixed newstyle required", clientFlags)
	}
	noZeroes := clientFlags&flagNoZeroes != 0
	for sc.export == nil {
		done, err := s.option(sc, noZeroes)
		if err != nil || done {
			return err
		}
	}
	return s.transmission(ctx, sc)
}

// option answers one option of the handshake; done: the client aborted.
func (s *Server) option(sc *srvConn, noZeroes bool) (done bool, err error) {
	var h struct {
		Magic uint64
		Opt   uint32
		Len   uint32
	}
	if err := binary.Read(sc.c, binary.BigEndian, &h); err != nil {
		return false, err
	}
	if h.Magic != optMagic {
		return false, fmt.Errorf("bad option magic %#x", h.Magic)
	}
	if h.Len > 64<<10 {
		return false, fmt.Errorf("option %d of %d bytes", h.Opt, h.Len)
	}
	data := make([]byte, h.Len)
	if _, err := io.ReadFull(sc.c, data); err != nil {
		return false, err
	}
	reply := func(typ uint32, payload []byte) error {
		b := binary.BigEndian.AppendUint64(nil, optReplyMagic)
		b = binary.BigEndian.AppendUint32(b, h.Opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
		_, err := sc.c.Write(append(b, payload...))
		return err
	}
	switch h.Opt {
	case optExportName:
		e, ok := s.Exports[string(data)]
		if !ok {
			return false, fmt.Errorf("unknown export %q", data) // the protocol has no error reply here
		}
		b := binary.BigEndian.AppendUint64(nil, uint64(e.Size()))
		b = binary.BigEndian.AppendUint16(b, exportFlags(e))
		if !noZeroes {
			b = append(b, make([]byte, 124)...)
		}
		sc.export = e
		_, err := sc.c.Write(b)
		return false, err
	case optAbort:
		reply(repAck, nil)
		return true, nil
	case optList:
		if len(data) != 0 {
			return false, reply(repErrInvalid, []byte("list takes no data"))
		}
		for name := range s.Exports {
			p := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
			if err := reply(repServer, append(p, name...)); err != nil {
				return false, err
			}
		}
		return false, reply(repAck, nil)
	case optStartTLS:
		return false, reply(repErrPolicy, []byte("no TLS: serve listens on loopback or a unix socket only"))
	case optStructured:
		if len(data) != 0 {
			return false, reply(repErrInvalid, []byte("structured reply takes no data"))
		}
		sc.structured = true
		return false, reply(repAck, nil)
	case optInfo, optGo:
		name, infos, ok := parseInfoRequest(data)
		if !ok {
			return false, reply(repErrInvalid, []byte("malformed info request"))
		}
		e, found := s.Exports[name]
		if !found {
			return false, reply(repErrUnknown, fmt.Appendf(nil, "no export %q", name))
		}
		p := binary.BigEndian.AppendUint16(nil, infoExport)
		p = binary.BigEndian.AppendUint64(p, uint64(e.Size()))
		p = binary.BigEndian.AppendUint16(p, exportFlags(e))
		if err := reply(repInfo, p); err != nil {
			return false, err
		}
		for _, want := range infos {
			if want == infoBlockSize {
				p := binary.BigEndian.AppendUint16(nil, infoBlockSize)
				p = binary.BigEndian.AppendUint32(p, 1)
				p = binary.BigEndian.AppendUint32(p, 4096)
				p = binary.BigEndian.AppendUint32(p, maxServerRead)
				if err := reply(repInfo, p); err != nil {
					return false, err
				}
			}
		}
		if err := reply(repAck, nil); err != nil {
			return false, err
		}
		if h.Opt == optGo {
			sc.export = e
		}
		return false, nil
	case optListMetaCtx, optSetMetaContext:
		name, queries, ok := parseMetaRequest(data)
		if !ok {
			return false, reply(repErrInvalid, []byte("malformed meta context request"))
		}
		if h.Opt == optSetMetaContext && !sc.structured {
			return false, reply(repErrInvalid, []byte("meta contexts need structured replies"))
		}
		if _, found := s.Exports[name]; !found {
			return false, reply(repErrUnknown, fmt.Appendf(nil, "no export %q", name))
		}
		give := len(queries) == 0 && h.Opt == optListMetaCtx
		for _, q := range queries {
			give = give || q == "base:allocation" || (h.Opt == optListMetaCtx && q == "base:")
		}
		if h.Opt == optSetMetaContext {
			sc.allocation = give
		}
		if give {
			p := binary.BigEndian.AppendUint32(nil, allocationCtx)
			if err := reply(repMetaContext, append(p, "base:allocation"...)); err != nil {
				return false, err
			}
		}
		return false, reply(repAck, nil)
	default:
		return false, reply(repErrUnsup, fmt.Appendf(nil, "option %d not supported", h.Opt))
	}
}

// Read-only, so several connections see the same bytes: multi-conn is safe.
const transFlags = transHasFlags | transSendFlush | transCanMultiConn | transSendCache

func exportFlags(e ServerExport) uint16 {
	if _, ok := e.(WritableExport); ok {
		return transFlags | transSendFUA | transSendTrim | transSendWriteZeroes
	}
	return transFlags | transReadOnly
}

// splitName takes the export name (length-prefixed) off an option's data
// that must have at least tail more bytes after it.
func splitName(data []byte, tail int) (string, []byte, bool) {
	if len(data) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n)+4+uint64(tail) > uint64(len(data)) {
		return "", nil, false
	}
	return string(data[4 : 4+n]), data[4+n:], true
}

func parseInfoRequest(data []byte) (name string, infos []uint16, ok bool) {
	name, rest, ok := splitName(data, 2)
	if !ok {
		return "", nil, false
	}
	k := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*k {
		return "", nil, false
	}
	for i := range k {
		infos = append(infos, binary.BigEndian.Uint16(rest[2*i:]))
	}
	return name, infos, true
}

func parseMetaRequest(data []byte) (name string, queries []string, ok bool) {
	name, rest, ok := splitName(data, 4)
	if !ok {
		return "", nil, false
	}
	k := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	for range k {
		if len(rest) < 4 {
			return "", nil, false
		}
		l := binary.BigEndian.Uint32(rest)
		if uint64(l)+4 > uint64(len(rest)) {
			return "", nil, false
		}
		queries = append(queries, string(rest[4:4+l]))
		rest = rest[4+l:]
	}
	return name, queries, len(rest) == 0
}

type request struct {
	Magic  uint32
	Flags  uint16
	Type   uint16
	Cookie uint64
	Off    uint64
	Len    uint32
}

// transmission answers requests until the client disconnects. Reads and
// status requests are answered concurrently (up to InFlight), each reply
// written whole.
func (s *Server) transmission(ctx context.Context, sc *srvConn) error {
	inflight := make(chan struct{}, max(1, s.InFlight))
	var wg sync.WaitGroup
	defer wg.Wait()
	// spawn answers a request in a goroutine of its own, up to InFlight at
	// once; a reply that cannot be written ends the connection.
	spawn := func(answer func() error) error {
		select {
		case inflight <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-inflight }()
			if answer() != nil {
				sc.c.Close()
			}
		}()
		return nil
	}
	for {
		var rq request
		if err := binary.Read(sc.c, binary.BigEndian, &rq); err != nil {
			return err
		}
		if rq.Magic != requestMagic {
			return fmt.Errorf("bad request magic %#x", rq.Magic)
		}
		switch rq.Type {
		case cmdDisc:
			return nil
		case cmdWrite, cmdTrim, cmdWriteZeroes, cmdFlush:
			var payload []byte
			if rq.Type == cmdWrite {
				if rq.Len > maxServerRead {
					return fmt.Errorf("write of %d bytes", rq.Len)
				}
				payload = make([]byte, rq.Len) // read before the next request, whatever the answer
				if _, err := io.ReadFull(sc.c, payload); err != nil {
					return err
				}
			}
			w, ok := sc.export.(WritableExport)
			if !ok {
				if rq.Type == cmdFlush {
					if err := sc.replyOK(rq); err != nil {
						return err
					}
					continue
				}
				if err := sc.replyErr(rq, errPerm, "read-only export"); err != nil {
					return err
				}
				continue
			}
			if bad := sc.check(rq); bad != "" && rq.Type != cmdFlush {
				if err := sc.replyErr(rq, errInval, bad); err != nil {
					return err
				}
				continue
			}
			if err := spawn(func() error { return sc.change(ctx, w, rq, payload) }); err != nil {
				return err
			}
		case cmdCache:
			if err := sc.replyOK(rq); err != nil {
				return err
			}
		case cmdRead, cmdBlockStatus:
			if bad := sc.check(rq); bad != "" {
				if err := sc.replyErr(rq, errInval, bad); err != nil {
					return err
				}
				continue
			}
			err := spawn(func() error {
				if rq.Type == cmdRead {
					return sc.read(ctx, rq)
				}
				return sc.blockStatus(rq)
			})
			if err != nil {
				return err
			}
		default:
			if err := sc.replyErr(rq, errInval, fmt.Sprintf("command %d not supported", rq.Type)); err != nil {
				return err
			}
		}
	}
}

// change carries out a write, trim, write-zeroes or flush and answers it;
// FUA makes the change durable before the answer.
func (sc *srvConn) change(ctx context.Context, w WritableExport, rq request, payload []byte) error {
	var err error
	switch rq.Type {
	case cmdWrite:
		err = w.WriteAt(ctx, payload, int64(rq.Off))
	case cmdTrim, cmdWriteZeroes:
		err = w.Zero(ctx, int64(rq.Off), int64(rq.Len))
	}
	if err == nil && (rq.Type == cmdFlush || rq.Flags&cmdFlagFUA != 0) {
		err = w.Flush(ctx)
	}
	if err != nil {
		return sc.replyErr(rq, errIO, err.Error())
	}
	return sc.replyOK(rq)
}

// check returns why a request for a range is refused, or "".
func (sc *srvConn) check(rq request) string {
	size := uint64(sc.export.Size())
	switch {
	case rq.Len == 0:
		return "zero length"
	case (rq.Type == cmdRead || rq.Type == cmdWrite) && rq.Len > maxServerRead: // status, trim and zeroing may span the disk
		return fmt.Sprintf("%d bytes: at most %d per request", rq.Len, maxServerRead)
	case rq.Off > size || uint64(rq.Len) > size-rq.Off:
		return fmt.Sprintf("[%d, +%d) beyond the export's %d bytes", rq.Off, rq.Len, size)
	case rq.Type == cmdBlockStatus && !sc.allocation:
		return "no meta context negotiated"
	}
	return ""
}

func (sc *srvConn) read(ctx context.Context, rq request) error {
	// Holes first: a range of zero chunks is answered without reading.
	type piece struct {
		off, n int64
		hole   bool
	}
	var pieces []piece
	if sc.structured {
		for off, end := int64(rq.Off), int64(rq.Off)+int64(rq.Len); off < end; {
			ext := sc.export.Extents(off, end-off)
			if len(ext) == 0 {
				pieces = append(pieces, piece{off, end - off, false})
				break
			}
			for _, e := range ext {
				n := min(int64(e.Length), end-off)
				hole := e.Flags&StateZero != 0
				if k := len(pieces); k > 0 && pieces[k-1].hole == hole {
					pieces[k-1].n += n
				} else {
					pieces = append(pieces, piece{off, n, hole})
				}
				off += n
				if off >= end {
					break
				}
			}
		}
	} else {
		pieces = []piece{{int64(rq.Off), int64(rq.Len), false}}
	}
	buf := make([]byte, rq.Len)
	for _, p := range pieces {
		if p.hole {
			continue
		}
		at := p.off - int64(rq.Off)
		if err := sc.export.ReadAt(ctx, buf[at:at+p.n], p.off); err != nil {
			return sc.replyErr(rq, errIO, err.Error())
		}
	}
	if !sc.structured {
		b := binary.BigEndian.AppendUint32(nil, simpleMagic)
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint64(b, rq.Cookie)
		return sc.write(b, buf)
	}
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	for i, p := range pieces {
		flags := uint16(0)
		if i == len(pieces)-1 {
			flags = replyFlagDone
		}
		var err error
		if p.hole {
			payload := binary.BigEndian.AppendUint64(nil, uint64(p.off))
			payload = binary.BigEndian.AppendUint32(payload, uint32(p.n))
			err = sc.chunkLocked(rq.Cookie, flags, replyOffsetHole, payload)
		} else {
			at := p.off - int64(rq.Off)
			head := structuredHeader(rq.Cookie, flags, replyOffsetData, 8+uint32(p.n))
			head = binary.BigEndian.AppendUint64(head, uint64(p.off))
			_, err = (&net.Buffers{head, buf[at : at+p.n]}).WriteTo(sc.c)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (sc *srvConn) blockStatus(rq request) error {
	limit := 1 << 20 / 8 // descriptors per reply, a bound on its size
	if rq.Flags&cmdFlagReqOne != 0 {
		limit = 1
	}
	payload := binary.BigEndian.AppendUint32(nil, allocationCtx)
	n := 0
	for off, end := int64(rq.Off), int64(rq.Off)+int64(rq.Len); off < end && n < limit; {
		ext := sc.export.Extents(off, end-off)
		if len(ext) == 0 {
			break
		}
		for _, e := range ext {
			l := min(int64(e.Length), end-off)
			payload = binary.BigEndian.AppendUint32(payload, uint32(l))
			payload = binary.BigEndian.AppendUint32(payload, e.Flags)
			off += l
			if n++; off >= end || n >= limit {
				break
			}
		}
	}
	if n == 0 {
		return sc.replyErr(rq, errIO, "no extents")
	}
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	return sc.chunkLocked(rq.Cookie, replyFlagDone, replyBlockStatus, payload)
}

func structuredHeader(cookie uint64, flags, typ uint16, n uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, structuredMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return binary.BigEndian.AppendUint32(b, n)
}

func (sc *srvConn) chunkLocked(cookie uint64, flags, typ uint16, payload []byte) error {
	_, err := sc.c.Write(append(structuredHeader(cookie, flags, typ, uint32(len(payload))), payload...))
	return err
}

func (sc *srvConn) write(parts ...[]byte) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	b := net.Buffers(parts)
	_, err := b.WriteTo(sc.c)
	return err
}

func (sc *srvConn) replyOK(rq request) error {
	if sc.structured {
		sc.wmu.Lock()
		defer sc.wmu.Unlock()
		return sc.chunkLocked(rq.Cookie, replyFlagDone, replyNone, nil)
	}
	b := binary.BigEndian.AppendUint32(nil, simpleMagic)
	b = binary.BigEndian.AppendUint32(b, 0)
	return sc.write(binary.BigEndian.AppendUint64(b, rq.Cookie))
}

// replyErr answers a request with an error code (and, structured, a
// message the client may log).
func (sc *srvConn) replyErr(rq request, code uint32, msg string) error {
	if sc.structured {
		msg = msg[:min(len(msg), 4096)]
		p := binary.BigEndian.AppendUint32(nil, code)
		p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
		sc.wmu.Lock()
		defer sc.wmu.Unlock()
		return sc.chunkLocked(rq.Cookie, replyFlagDone, replyError, append(p, msg...))
	}
	b := binary.BigEndian.AppendUint32(nil, simpleMagic)
	b = binary.BigEndian.AppendUint32(b, code)
	return sc.write(binary.BigEndian.AppendUint64(b, rq.Cookie))
}
