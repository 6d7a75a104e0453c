package testserver

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// ThrottleProxy is an HTTP proxy in front of an S3 server that behaves
// like a busy S3 service: above RPS requests per second it answers 503
// SlowDown (S3's own error document), and every DropEvery-th request it
// drops the connection without an answer — half of those before the
// request reaches the server, half after the server did it (the answer
// lost: a retried PUT finds its object there).
type ThrottleProxy struct {
	URL string

	mu      sync.Mutex
	n       int
	seconds map[int64]*ProxySecond
	start   time.Time
}

// ProxySecond is what the proxy did in one second since it started.
type ProxySecond struct {
	Second                       int
	Accepted, Throttled, Dropped int
}

// StartThrottleProxy starts the proxy to target (http://host:port).
func StartThrottleProxy(t testing.TB, target string, rps float64, dropEvery int) *ThrottleProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ThrottleProxy{URL: "http://" + ln.Addr().String(), seconds: map[int64]*ProxySecond{}, start: time.Now()}
	lim := rate.NewLimiter(rate.Limit(rps), max(1, int(rps/5)))
	upstream := &http.Transport{MaxIdleConnsPerHost: 64}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.n++
		n := p.n
		p.mu.Unlock()
		drop := dropEvery > 0 && n%dropEvery == 0
		if drop && (n/dropEvery)%2 == 1 {
			p.count(func(s *ProxySecond) { s.Dropped++ })
			hangUp(w)
			return
		}
		if !lim.Allow() {
			p.count(func(s *ProxySecond) { s.Throttled++ })
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>`)
			return
		}
		body, _ := io.ReadAll(r.Body)
		out, err := http.NewRequestWithContext(r.Context(), r.Method, target+r.URL.RequestURI(), bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		out.Header = r.Header.Clone()
		out.Host = r.Host // the client signed this Host
		out.ContentLength = int64(len(body))
		resp, err := upstream.RoundTrip(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		if drop {
			p.count(func(s *ProxySecond) { s.Dropped++ })
			hangUp(w)
			return
		}
		p.count(func(s *ProxySecond) { s.Accepted++ })
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p
}

// hangUp closes the client's connection without an answer.
func hangUp(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if c, _, err := hj.Hijack(); err == nil {
			c.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

func (p *ThrottleProxy) count(f func(*ProxySecond)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	sec := int64(time.Since(p.start) / time.Second)
	s := p.seconds[sec]
	if s == nil {
		s = &ProxySecond{Second: int(sec)}
		p.seconds[sec] = s
	}
	f(s)
}

// Log is the proxy's per-second record, in order.
func (p *ThrottleProxy) Log() []ProxySecond {
	p.mu.Lock()
	defer p.mu.Unlock()
	var last int64
	for k := range p.seconds {
		last = max(last, k)
	}
	var out []ProxySecond
	for k := int64(0); k <= last; k++ {
		if s := p.seconds[k]; s != nil {
			out = append(out, *s)
		}
	}
	return out
}

func (s ProxySecond) String() string {
	return fmt.Sprintf("%3ds: %3d accepted, %3d throttled, %d dropped", s.Second, s.Accepted, s.Throttled, s.Dropped)
}
