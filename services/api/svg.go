package api

// Charts drawn on the server as inline SVG: no JavaScript library, nothing
// fetched by the browser, the same picture in a screenshot and a test.

import (
	"fmt"
	"hash/fnv"
	"html/template"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/strata-backup/strata/contracts"
)

var palette = []string{"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"}

func colour(s string) string {
	h := fnv.New32a()
	h.Write([]byte(s))
	return palette[h.Sum32()%uint32(len(palette))]
}

// timelineSVG draws spans as bars on one time axis, one row each, coloured
// by service.
func timelineSVG(spans []Span) template.HTML {
	if len(spans) == 0 {
		return ""
	}
	const width, label, row = 900.0, 330.0, 18.0
	start, end := spans[0].Start, spans[0].Start
	for _, s := range spans {
		if s.Start.Before(start) {
			start = s.Start
		}
		if e := s.Start.Add(s.Duration); e.After(end) {
			end = e
		}
	}
	total := max(end.Sub(start), time.Millisecond)
	var b strings.Builder
	height := row*float64(len(spans)) + 24
	fmt.Fprintf(&b, `<svg class="timeline" role="img" aria-label="span timeline" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" xmlns="http://www.w3.org/2000/svg">`, width, height, width, height)
	fmt.Fprintf(&b, `<text x="%.0f" y="12" class="axis">0</text><text x="%.0f" y="12" text-anchor="end" class="axis">%s</text>`, label, width-4, total.Round(time.Millisecond))
	for i, s := range spans {
		y := 20 + row*float64(i)
		x := label + (width-label-4)*float64(s.Start.Sub(start))/float64(total)
		w := max(1, (width-label-4)*float64(s.Duration)/float64(total))
		fill := colour(s.Service)
		if s.Error {
			fill = "#d62728"
		}
		name := template.HTMLEscapeString(s.Service + ": " + s.Operation)
		fmt.Fprintf(&b, `<g class="span" data-service="%s"><text x="4" y="%.0f" class="label">%s</text><rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="%s"><title>%s %s</title></rect></g>`,
			template.HTMLEscapeString(s.Service), y+12, name, x, y+2, w, row-5, fill, name, s.Duration.Round(time.Microsecond))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// bytesSVG draws each backup's bytes read and stored as paired bars.
func bytesSVG(recs []*contracts.BackupRecord) template.HTML {
	if len(recs) == 0 {
		return ""
	}
	if len(recs) > 40 {
		recs = recs[len(recs)-40:]
	}
	const width, height, pad = 900.0, 220.0, 40.0
	var most int64 = 1
	for _, r := range recs {
		most = max(most, r.ReadBytes(), r.StoredBytes())
	}
	slot := (width - pad) / float64(len(recs))
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="bytes" role="img" aria-label="bytes per backup" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" xmlns="http://www.w3.org/2000/svg">`, width, height, width, height)
	fmt.Fprintf(&b, `<text x="2" y="12" class="axis">%s</text><text x="2" y="%.0f" class="axis">0</text>`, humanBytes(most), height-pad)
	for i, r := range recs {
		x := pad + slot*float64(i)
		for k, v := range []int64{r.ReadBytes(), r.StoredBytes()} {
			h := (height - pad - 16) * float64(v) / float64(most)
			fill := []string{"#4e79a7", "#59a14f"}[k]
			if r.State == contracts.StateFailed {
				fill = "#e15759"
			}
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>`,
				x+float64(k)*slot*0.4, height-pad-h, slot*0.38, h, fill, template.HTMLEscapeString(r.ID), []string{"read", "stored"}[k], humanBytes(v))
		}
		if len(recs) <= 12 || i%(len(recs)/12+1) == 0 {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" class="axis">%s</text>`, x, height-pad+14, r.CreatedAt.UTC().Format("01-02 15:04"))
		}
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" class="legend"><tspan fill="#4e79a7">■ read</tspan> <tspan fill="#59a14f">■ stored</tspan></text>`, pad, height-4)
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// humanBytes: 8.0 MiB, 209 KiB.
func humanBytes(n int64) string { return humanize.IBytes(uint64(max(n, 0))) }
