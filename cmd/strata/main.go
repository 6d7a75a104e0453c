// Command strata is Strata's command-line tool: request backups, list and
// restore them, and run everything in one process for a laptop demo.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const usage = `strata — incremental, deduplicated VM disk backups

Usage:
  strata backup  --vm NAME --source file:///abs/path.img|nbd://host:port/export|vsphere://vcenter/VM
                 [--verify stored|trivial|certify|chunks|restore-test] [--wait] [--json]
  strata ls      [--vm NAME] [--json]
  strata verify  --vm NAME --backup ID|latest --mode stored|trivial|certify|chunks|restore-test [--json]
  strata verify  --all --mode chunks [--json]
  strata check   [--json]                 bad chunks, damaged backups (exit 1 when damaged)
  strata restore --vm NAME --backup ID|latest --to PATH|vsphere://HOST/NEW-VM[?datastore=&pool=&folder=] [--json]
  strata prune   --vm NAME [--keep-last N --keep-daily D --keep-weekly W --keep-monthly M] [--yes] [--json]
  strata gc      [--dry-run] [--grace 24h] [--json]
  strata policy  set --vm NAME --source URL --schedule CRON [--jitter D] [--key-interval K] [--verify MODE]
                     [--keep-last N --keep-daily D --keep-weekly W --keep-monthly M]
  strata policy  ls [--json] | rm --vm NAME
  strata dev     --data DIR              all six services + NATS in one process
  strata mkdisk  --size BYTES PATH       write a deterministic demo disk image
  strata version

Settings come from STRATA_* environment variables (see README.md):
STRATA_NATS_URL, STRATA_S3_*, STRATA_STORE_DIR, …
`

// exitError carries a process exit code.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "backup":
		err = cmdBackup(ctx, args)
	case "ls":
		err = cmdLs(ctx, args)
	case "restore":
		err = cmdRestore(ctx, args)
	case "gc":
		err = cmdGC(ctx, args)
	case "verify":
		err = cmdVerify(ctx, args)
	case "check":
		err = cmdCheck(ctx, args)
	case "prune":
		err = cmdPrune(ctx, args)
	case "policy":
		err = cmdPolicy(ctx, args)
	case "dev":
		err = cmdDev(ctx, args)
	case "mkdisk":
		err = cmdMkdisk(args)
	case "version":
		fmt.Println("strata", version)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "strata: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "strata:", err)
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

const version = "0.1.0"
