package source

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/strata-backup/strata/pkg/nbd"
)

// NBD is a disk exported over NBD (qemu-nbd, libvirt pull-mode backups,
// XCP-ng). URL: nbd://host:port/export[?bitmap=NAME]. Holes come from the
// base:allocation context; with a bitmap, changes come from
// qemu:dirty-bitmap:NAME.
type NBD struct {
	conn   *nbd.Conn
	bitmap string
}

// NBDTLS is how an nbds:// source is reached: NBD_OPT_STARTTLS, the
// server's certificate checked against CAFile (none: the system's roots)
// and, with CertFile and KeyFile, a client certificate (qemu-nbd's
// tls-creds-x509 asks for one unless verify-peer=off).
type NBDTLS struct {
	CAFile   string `envconfig:"NBD_CA_FILE"`
	CertFile string `envconfig:"NBD_CERT_FILE"`
	KeyFile  string `envconfig:"NBD_KEY_FILE"`
}

func (t *NBDTLS) config(host string) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if t == nil {
		return cfg, nil
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("nbd TLS CA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nbd TLS CA %s: no certificate in it", t.CAFile)
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("nbd TLS: STRATA_NBD_CERT_FILE and STRATA_NBD_KEY_FILE go together")
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("nbd TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// OpenNBD connects to an NBD export.
func OpenNBD(u *url.URL) (*NBD, error) { return openNBD(u, nil) }

func openNBD(u *url.URL, cfg *tls.Config) (*NBD, error) {
	export := strings.TrimPrefix(u.Path, "/")
	bitmap := u.Query().Get("bitmap")
	contexts := []string{"base:allocation"}
	if bitmap != "" {
		contexts = append(contexts, "qemu:dirty-bitmap:"+bitmap)
	}
	c, err := nbd.DialTLS(u.Host, export, cfg, contexts...)
	if err != nil {
		return nil, err
	}
	if bitmap != "" && !c.HasContext("qemu:dirty-bitmap:"+bitmap) {
		c.Close()
		return nil, fmt.Errorf("nbd export %s has no dirty bitmap %q", u.Redacted(), bitmap)
	}
	return &NBD{conn: c, bitmap: bitmap}, nil
}

func (d *NBD) Size() int64                             { return d.conn.Size() }
func (d *NBD) ReadAt(p []byte, off int64) (int, error) { return d.conn.ReadAt(p, off) }
func (d *NBD) Close() error                            { return d.conn.Close() }

// ChangedExtents: since empty → the extents holding data (base:allocation
// neither hole nor zero); otherwise the dirty extents of the export's
// bitmap (the caller is responsible for the bitmap covering the changes
// since its parent backup; see README, "QEMU dirty bitmaps"). The returned
// ChangeID names the bitmap consumed.
func (d *NBD) ChangedExtents(ctx context.Context, since ChangeID) ([]Extent, ChangeID, error) {
	context, want := "base:allocation", func(f uint32) bool { return f&(nbd.StateHole|nbd.StateZero) == 0 }
	if since != "" {
		if d.bitmap == "" {
			return nil, "", ErrNoChangeTracking
		}
		context, want = "qemu:dirty-bitmap:"+d.bitmap, func(f uint32) bool { return f&nbd.StateDirty != 0 }
	}
	var out []Extent
	size := d.conn.Size()
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
		ext, err := d.conn.BlockStatus(context, off, uint32(min(size-off, 1<<30)))
		if err != nil {
			return nil, "", err
		}
		for _, e := range ext {
			length := min(int64(e.Length), size-off)
			if want(e.Flags) {
				if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length == off {
					out[n-1].Length += length
				} else {
					out = append(out, Extent{off, length})
				}
			}
			off += length
			if off >= size {
				break
			}
		}
	}
	return out, ChangeID(d.bitmap), nil
}
