package testservers

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ProcessCPU is the user+system CPU time process pid has used so far
// (utime and stime in /proc/PID/stat, in clock ticks of 1/100 s).
// Benchmarks read it to say where a run's cycles went.
func ProcessCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// NewOnCPU starts a server of the given kind for this test alone, on one
// CPU of this machine, as if it ran on a one-CPU machine of its own: its
// process is pinned to cpu and its Go runtime told so (GOMAXPROCS=1).
// Pinning a Go process after it started is not the same: a runtime built
// for go < 1.25 (MinIO's module is) keeps the GOMAXPROCS it started with,
// and two Ps taking turns on one CPU cost MinIO half as much again per
// byte (BenchmarkEndToEnd1GiB). A restart (Start) is not pinned.
func NewOnCPU(tb testing.TB, kind Kind, cpu int) *Server {
	tb.Helper()
	if cpu >= runtime.NumCPU() {
		tb.Fatalf("starting %s on CPU %d: this machine has %d CPUs", kind, cpu, runtime.NumCPU())
	}
	s := newWithEnv(tb, kind, "GOMAXPROCS=1")
	undo, err := PinProcess(s.Pid(), cpu)
	if err != nil {
		tb.Fatalf("pinning %s: %v", kind, err)
	}
	tb.Cleanup(func() { undo() })
	return s
}

// PinProcess restricts every thread of process pid to one CPU (threads it
// creates later inherit their creator's set) and returns what undoes it.
// Benchmarks use it to give a component CPU of its own, as it has when it
// runs on its own node, on a machine that hosts all of them.
func PinProcess(pid, cpu int) (undo func() error, err error) {
	if cpu >= runtime.NumCPU() {
		return nil, fmt.Errorf("pinning process %d to CPU %d: this machine has %d CPUs", pid, cpu, runtime.NumCPU())
	}
	set := func(to func(*unix.CPUSet)) error {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			var s unix.CPUSet
			to(&s)
			if err := unix.SchedSetaffinity(tid, &s); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("pinning thread %d of process %d: %w", tid, pid, err)
			}
		}
		return nil
	}
	all := func(s *unix.CPUSet) {
		for c := range runtime.NumCPU() {
			s.Set(c)
		}
	}
	if err := set(func(s *unix.CPUSet) { s.Set(cpu) }); err != nil {
		set(all)
		return nil, err
	}
	return func() error { return set(all) }, nil
}
