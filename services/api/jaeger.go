package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"time"
)

// Span is one span of a backup's trace, as the timeline draws it.
type Span struct {
	Service, Operation string
	Start              time.Time
	Duration           time.Duration
	Error              bool
}

var traceIDPattern = regexp.MustCompile(`^[0-9a-f]{16,32}$`)

// jaegerClient reads traces from Jaeger's query API (GET
// /api/traces/{id}).
type jaegerClient struct {
	base string // e.g. http://jaeger:16686
	http *http.Client
}

// Trace returns the trace's spans, oldest first.
func (j *jaegerClient) Trace(ctx context.Context, traceID string) ([]Span, error) {
	if !traceIDPattern.MatchString(traceID) {
		return nil, fmt.Errorf("trace id %q is not a trace id", traceID)
	}
	req, err := http.NewRequestWithContext(ctx, "GET", j.base+"/api/traces/"+url.PathEscape(traceID), nil)
	if err != nil {
		return nil, err
	}
	resp, err := j.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("jaeger: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jaeger: %s", resp.Status)
	}
	var doc struct {
		Data []struct {
			Spans []struct {
				OperationName string
				StartTime     int64 // µs
				Duration      int64 // µs
				ProcessID     string
				Tags          []struct {
					Key   string
					Value any
				}
			}
			Processes map[string]struct{ ServiceName string }
		}
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&doc); err != nil {
		return nil, fmt.Errorf("jaeger: %w", err)
	}
	var out []Span
	for _, t := range doc.Data {
		for _, s := range t.Spans {
			sp := Span{Service: t.Processes[s.ProcessID].ServiceName, Operation: s.OperationName,
				Start: time.UnixMicro(s.StartTime), Duration: time.Duration(s.Duration) * time.Microsecond}
			for _, tag := range s.Tags {
				if tag.Key == "error" && tag.Value == true {
					sp.Error = true
				}
			}
			out = append(out, sp)
		}
	}
	sort.SliceStable(out, func(i, k int) bool { return out[i].Start.Before(out[k].Start) })
	return out, nil
}
