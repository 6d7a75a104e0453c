// Command strata is Strata's command-line tool: request backups, list and
// restore them, and run everything in one process for a laptop demo.
//
// Built on cobra, so every command's --help, usage and shell completion
// (strata completion bash|zsh|fish) come from the flags themselves and
// cannot drift from them.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

const version = "0.2.0"

// exitError carries a process exit code: 1 for a failed operation (or an
// unhealthy repository), 2 for a usage error.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "strata",
		Short: "incremental, deduplicated VM disk backups",
		Long: `strata — incremental, deduplicated VM disk backups.

Settings come from STRATA_* environment variables (see README.md):
STRATA_NATS_URL, STRATA_S3_*, STRATA_STORE_DIR, STRATA_ENCRYPTION_KEY_FILE, …`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return exitError{2, fmt.Errorf("%w\nsee '%s --help'", err, cmd.CommandPath())}
	})
	policy := &cobra.Command{Use: "policy", Short: "scheduled backups and retention per VM", Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitError{2, errors.New("policy needs set, ls or rm")}
		}}
	policy.AddCommand(newPolicySetCmd(), newPolicyLsCmd(), newPolicyRmCmd())
	root.AddCommand(newBackupCmd(), newNotifyCmd(), newCancelCmd(), newLsCmd(), newRestoreCmd(), newServeCmd(), newFilesCmd(), newRmCmd(), newVerifyCmd(), newCheckCmd(), newGCCmd(), newRepoCmd(), newPruneCmd(), newCopyCmd(), newMirrorCmd(),
		policy, newCatalogCmd(), newDevCmd(), newMkdiskCmd(), newNATSAuthCmd(), newS3RolesCmd(),
		&cobra.Command{Use: "version", Short: "print the version", Args: usage(cobra.NoArgs), Run: func(cmd *cobra.Command, args []string) {
			fmt.Println("strata", version)
		}})
	return root
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := withCPUProfile(os.Getenv("STRATA_CPU_PROFILE"), func() error { return newRootCmd().ExecuteContext(ctx) })
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "strata:", err)
	var ee exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	if isUsageError(err) {
		os.Exit(2)
	}
	os.Exit(1)
}

// withCPUProfile runs f, writing a CPU profile of the process to path
// (go tool pprof) when path is not empty: how a user or a benchmark sees
// where one command's time goes (a restore's client side, say).
func withCPUProfile(path string, f func() error) error {
	if path == "" {
		return f()
	}
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("STRATA_CPU_PROFILE: %w", err)
	}
	defer out.Close()
	if err := pprof.StartCPUProfile(out); err != nil {
		return fmt.Errorf("STRATA_CPU_PROFILE: %w", err)
	}
	defer pprof.StopCPUProfile()
	return f()
}

// usage makes a positional-argument check's error a usage error (exit 2).
func usage(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return exitError{2, fmt.Errorf("%s: %w\nsee '%s --help'", cmd.CommandPath(), err, cmd.CommandPath())}
		}
		return nil
	}
}

// isUsageError recognises cobra's unknown-command error, the one usage
// error it returns without a hook to type it.
func isUsageError(err error) bool {
	return strings.HasPrefix(err.Error(), "unknown command")
}
