package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// natsNotices turns the bus's connection events into lines for a person:
// "waiting for NATS (…)" while it is away, "NATS is back" when it returns
// — instead of silence, or a raw client error when the command gives up.
// Everything else the bus logs is dropped (the CLI is not a service).
type natsNotices struct {
	mu   sync.Mutex
	w    io.Writer
	away bool
}

func (h *natsNotices) Enabled(context.Context, slog.Level) bool { return true }
func (h *natsNotices) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *natsNotices) WithGroup(string) slog.Handler            { return h }

func (h *natsNotices) Handle(_ context.Context, r slog.Record) error {
	var why string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			why = a.Value.String()
		}
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	switch r.Message {
	case "nats disconnected", "waiting for nats":
		if !h.away {
			h.away = true
			fmt.Fprintf(h.w, "\nstrata: waiting for NATS (%s)…\n", strings.TrimPrefix(why, "nats: "))
		}
	case "nats reconnected":
		if h.away {
			h.away = false
			fmt.Fprintln(h.w, "strata: NATS is back")
		}
	}
	return nil
}
