//go:build linux

package nbd

import (
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// quickAck wraps a TCP connection's reads so the kernel acknowledges every
// segment at once. qemu-nbd answers an option with several small writes;
// with Nagle on its side and delayed ACKs on ours, each waits ~40 ms for
// our ACK: a handshake took 88 ms on loopback. The flag is not sticky, so
// it is set again after every read.
func quickAck(c net.Conn) io.Reader {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &quickAckReader{c: tc, raw: raw}
}

type quickAckReader struct {
	c   *net.TCPConn
	raw syscall.RawConn
}

func (q *quickAckReader) Read(p []byte) (int, error) {
	n, err := q.c.Read(p)
	q.raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1) })
	return n, err
}
