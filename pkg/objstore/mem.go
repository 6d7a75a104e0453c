package objstore

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Mem is an in-memory store for unit tests of one package. It is never the
// proof that a capability works against real storage.
type Mem struct {
	mu   sync.Mutex
	objs map[string]memObj
}

type memObj struct {
	data []byte
	mod  time.Time
}

func NewMem() *Mem { return &Mem{objs: map[string]memObj{}} }

func (m *Mem) String() string { return "mem" }

func (m *Mem) Put(ctx context.Context, key string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.objs[key] = memObj{data: append([]byte(nil), data...), mod: time.Now()}
	return nil
}

func (m *Mem) PutIfAbsent(ctx context.Context, key string, data []byte) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.objs[key]; ok {
		return false, nil
	}
	m.objs[key] = memObj{data: append([]byte(nil), data...), mod: time.Now()}
	return true, nil
}

func (m *Mem) Get(ctx context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	return append([]byte(nil), o.data...), nil
}

func (m *Mem) GetRange(ctx context.Context, key string, off, n int64) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	if off < 0 || n <= 0 || off >= int64(len(o.data)) {
		return nil, fmt.Errorf("get %s: %w: %d+%d of %d bytes", key, ErrBadRange, off, n, len(o.data))
	}
	return append([]byte(nil), o.data[off:min(off+n, int64(len(o.data)))]...), nil
}

func (m *Mem) Stat(ctx context.Context, key string) (Info, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.objs[key]
	if !ok {
		return Info{}, fmt.Errorf("stat %s: %w", key, ErrNotFound)
	}
	return Info{Key: key, Size: int64(len(o.data)), Modified: o.mod}, nil
}

func (m *Mem) Delete(ctx context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.objs, key)
	return nil
}

func (m *Mem) List(ctx context.Context, prefix string, fn func(Info) error) error {
	m.mu.Lock()
	var infos []Info
	for k, o := range m.objs {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, Info{Key: k, Size: int64(len(o.data)), Modified: o.mod})
		}
	}
	m.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, in := range infos {
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}
