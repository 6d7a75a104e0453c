package main

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/strata-backup/strata/pkg/runtime"
)

// repoFlag is --repo: the repository a read-side command reads, with no
// NATS at all (records come from their copies in it). One command runs
// per process, so one variable serves every command that has the flag.
var repoFlag string

// addRepoFlag gives a read-side command --repo.
func addRepoFlag(cmd *cobra.Command) {
	cmd.Flags().StringVar(&repoFlag, "repo", "", "read this repository directly, without NATS: dir:///path or s3://bucket[/prefix]?endpoint=URL&region=R (credentials from STRATA_S3_ACCESS_KEY/SECRET_KEY)")
}

// applyRepo points c at the repository --repo names, with NATS off.
func applyRepo(spec string, c *runtime.Common) error {
	u, err := url.Parse(spec)
	if err != nil {
		return exitError{2, fmt.Errorf("--repo %q: %w", spec, err)}
	}
	c.NATSURL = ""
	switch u.Scheme {
	case "dir":
		if u.Host != "" || !filepath.IsAbs(u.Path) {
			return exitError{2, fmt.Errorf("--repo %q: a directory is dir:///absolute/path", spec)}
		}
		c.StoreDir = filepath.Clean(u.Path)
	case "s3":
		if u.Host == "" {
			return exitError{2, fmt.Errorf("--repo %q: no bucket (s3://bucket/prefix?endpoint=…)", spec)}
		}
		q := u.Query()
		for k := range q {
			if k != "endpoint" && k != "region" {
				return exitError{2, fmt.Errorf("--repo %q: unknown parameter %q (endpoint, region)", spec, k)}
			}
		}
		if ep := q.Get("endpoint"); ep != "" {
			e, err := url.Parse(ep)
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
				return exitError{2, fmt.Errorf("--repo %q: endpoint %q is not an http(s) URL", spec, ep)}
			}
			c.S3Endpoint = ep
		}
		if r := q.Get("region"); r != "" {
			c.S3Region = r
		}
		prefix := strings.TrimPrefix(u.Path, "/")
		if prefix != "" && !strings.HasSuffix(prefix, "/") {
			prefix += "/" // s3://b/site1 is the keys under site1/
		}
		c.StoreDir, c.S3Bucket, c.S3Prefix = "", u.Host, prefix
	default:
		return exitError{2, fmt.Errorf("--repo %q: want dir:///path or s3://bucket/prefix", spec)}
	}
	return nil
}
