// Command probe is the health check of Strata's FROM-scratch infrastructure
// images (nats-server, versitygw, Jaeger), which have no shell or curl:
//
//	probe http URL    exit 0 on a 2xx answer within 3 s
//	probe tcp ADDR    exit 0 when ADDR accepts a connection within 3 s
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: probe http URL | probe tcp ADDR")
		os.Exit(2)
	}
	if err := probe(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func probe(kind, target string) error {
	switch kind {
	case "http":
		c := http.Client{Timeout: 3 * time.Second}
		resp, err := c.Get(target)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("%s: %s", target, resp.Status)
		}
		return nil
	case "tcp":
		conn, err := net.DialTimeout("tcp", target, 3*time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	return fmt.Errorf("unknown probe kind %q", kind)
}
