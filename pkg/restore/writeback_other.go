//go:build !linux

package restore

import (
	"os"

	"github.com/strata-backup/strata/pkg/manifest"
)

// startWriteback: only Linux starts writeback early; elsewhere the final
// fsync writes the whole image.
func startWriteback(*os.File, *manifest.Manifest, fetchedRun) {}
