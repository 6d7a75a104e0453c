// Command strata-vcsim is TEST SCAFFOLDING for the compose demo: govmomi's
// vCenter simulator with the CBT extension of package vcsimcbt, serving
// one VM ("demo-vm", two disks holding generated data) on
// STRATA_VCSIM_LISTEN (default :8989, user "user", password "pass").
//
// POST /demo/change?percent=2 rewrites that share of the VM's 256 KiB
// blocks (Strata's default chunk size) at scattered offsets, tracked by
// CBT, so the next backup has an incremental to take. It is not vCenter: use it to try Strata, never as
// proof about a real vSphere.
package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/strata-backup/strata/e2e/vcsimcbt"
	"github.com/strata-backup/strata/pkg/demodisk"
)

// fatal is a vcsimcbt.TB for a process: failures end it.
type fatal struct{}

func (fatal) Helper()                           {}
func (fatal) Fatal(args ...any)                 { log.Fatal(args...) }
func (fatal) Fatalf(format string, args ...any) { log.Fatalf(format, args...) }
func (fatal) Cleanup(func())                    {}

func main() {
	listen := os.Getenv("STRATA_VCSIM_LISTEN")
	if listen == "" {
		listen = ":8989"
	}
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		os.Exit(healthcheck(listen))
	}
	sim := vcsimcbt.Start(fatal{}, listen)
	sizes := []int64{256 << 20, 128 << 20}
	vm := sim.CreateVM("demo-vm", sizes...)
	// The guest's data: a generated image per disk, written through the
	// simulator so CBT knows what is allocated.
	for i, size := range sizes {
		img := fmt.Sprintf("%s/demo-disk%d.img", os.TempDir(), i)
		if err := demodisk.Write(img, size, uint64(100+i)); err != nil {
			log.Fatal(err)
		}
		data, err := os.ReadFile(img)
		if err != nil {
			log.Fatal(err)
		}
		os.Remove(img)
		for off := 0; off < len(data); off += 1 << 20 {
			if !allZero(data[off : off+1<<20]) {
				sim.Write(vm, i, int64(off), data[off:off+1<<20])
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 1))
	http.HandleFunc("POST /demo/change", func(w http.ResponseWriter, r *http.Request) {
		percent, err := strconv.ParseFloat(r.URL.Query().Get("percent"), 64)
		if err != nil || percent <= 0 || percent > 100 {
			http.Error(w, "percent: want (0, 100]", http.StatusBadRequest)
			return
		}
		changed := 0
		const block = 256 << 10
		for i, size := range sizes {
			blocks := size / block
			for n := 0; n < int(float64(blocks)*percent/100); n++ {
				b := make([]byte, block)
				for j := range b {
					b[j] = byte(rng.Uint32())
				}
				sim.Write(vm, i, rng.Int64N(blocks)*block, b)
				changed++
			}
		}
		fmt.Fprintf(w, "rewrote %d blocks of 256 KiB\n", changed)
	})
	go func() {
		// The demo's own port, beside the simulator's.
		log.Fatal(http.ListenAndServe(":8990", nil))
	}()
	log.Printf("vCenter simulator with CBT on https://%s/sdk (user/pass); VM demo-vm, disks of %v bytes; POST :8990/demo/change?percent=2", sim.Host, sizes)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// healthcheck: the SDK endpoint answers (no shell in the image).
func healthcheck(listen string) int {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return 1
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	res, err := c.Get("https://127.0.0.1:" + port + "/about")
	if err != nil {
		return 1
	}
	res.Body.Close()
	return 0
}
