package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/strata-backup/strata/pkg/runtime"
)

// devState is what a running `strata dev` leaves for the CLI, so that
// commands in another shell reach its NATS and repository with nothing set
// (the first thing a new user tries; without it `restore` and `files`
// went to AWS S3).
type devState struct {
	NATSURL  string `json:"nats_url"`
	StoreDir string `json:"store_dir"`
	PID      int    `json:"pid"`
}

// devStatePath is $XDG_STATE_HOME/strata/dev.json (~/.local/state/...).
func devStatePath() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "strata", "dev.json"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, ".local", "state", "strata", "dev.json"), nil
}

// writeDevState records this process's dev stack; remove undoes it.
func writeDevState(s devState) (remove func(), err error) {
	p, err := devStatePath()
	if err != nil {
		return func() {}, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return func() {}, err
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return func() {}, err
	}
	return func() {
		// only our own: another dev may have started since
		if cur, err := readDevState(p); err == nil && cur.PID == s.PID {
			os.Remove(p)
		}
	}, nil
}

func readDevState(p string) (devState, error) {
	var s devState
	b, err := os.ReadFile(p)
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", p, err)
	}
	return s, nil
}

// loadConfig is runtime.Load for the CLI: with no repository configured
// (neither STRATA_STORE_DIR nor STRATA_S3_ENDPOINT set) and a `strata dev`
// running, its NATS and repository are used (unless STRATA_NATS_URL names
// another server), and stderr says so. --repo overrides all of it.
func loadConfig(spec any, common *runtime.Common) error {
	if err := runtime.Load(spec); err != nil {
		return err
	}
	if repoFlag != "" {
		return applyRepo(repoFlag, common)
	}
	_, storeSet := os.LookupEnv("STRATA_STORE_DIR")
	_, s3Set := os.LookupEnv("STRATA_S3_ENDPOINT")
	if storeSet || s3Set {
		return nil
	}
	p, err := devStatePath()
	if err != nil {
		return nil
	}
	s, err := readDevState(p)
	if err != nil || s.PID <= 0 || s.StoreDir == "" {
		return nil
	}
	if err := syscall.Kill(s.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return nil // that dev is gone (killed: its file stayed)
	}
	if url, set := os.LookupEnv("STRATA_NATS_URL"); set && url != s.NATSURL {
		return nil
	}
	common.NATSURL, common.StoreDir = s.NATSURL, s.StoreDir
	fmt.Fprintf(os.Stderr, "strata: using the repository of strata dev (pid %d): %s\n", s.PID, s.StoreDir)
	return nil
}
