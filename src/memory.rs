//! The process's memory: the C library's allocator, told to keep what it frees, with
//! its heaps backed by transparent huge pages.
//!
//! A run allocates and frees many blocks of kilobytes to megabytes: decoded Parquet
//! pages, the dense loads, a layer's shares, window statistics, output columns. By
//! default glibc gives a block above its mapping threshold (128 KB at first, rising
//! to the largest block freed so far, up to 32 MB) a mapping of its own and unmaps it
//! when it is freed, and gives a heap's free top back above 128 KB, so memory is
//! faulted in and zeroed again and again, 4 KB at a time. On the bundled traces that
//! was about 20,000 page faults and a sixth of the run's CPU time (BENCHMARKS.md,
//! twenty-fourth session). [`tune`] serves blocks up to 32 MB from the heaps and
//! keeps freed memory for the next block; [`Allocator`] asks the kernel for 2 MB
//! pages under the heaps, so the memory a heap grows by is faulted in 512 times
//! fewer pieces. This is what glibc's own `glibc.malloc.hugetlb=1` tunable does,
//! which can only be set in the environment before a process starts.
//!
//! Neither changes what any computation gives: the advice only says how memory is
//! backed, and where the kernel has transparent huge pages off (or on a system
//! without `madvise`) it is refused or absent and nothing changes. The cost is
//! memory kept: each heap keeps up to [`KEEP`] of free memory for reuse instead of
//! returning it (a tenth more peak memory in a CPU sweep of ten units, measured).

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks from this size up get a mapping of their own, returned when freed (glibc's
/// largest mapping threshold, which every glibc accepts); they are advised whole.
pub const ALONE: usize = 32 << 20;

/// Free memory a heap keeps at its top instead of returning it to the system.
pub const KEEP: usize = 512 << 20;

/// The system allocator ([`System`]), which after [`tune`] also advises the memory
/// it hands out for transparent huge pages (`madvise(MADV_HUGEPAGE)`): the main
/// heap as it grows, the heap of every other arena (a 64 MB mapping) when a thread
/// first gets a block from it (a thread remembers its last eight), and blocks of
/// [`ALONE`] bytes or more whole.
pub struct Allocator;

// SAFETY: every call is passed to `System` unchanged; `huge::after` only adds advice
// about how memory is backed, which changes no byte of it, and allocates nothing.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        huge::after(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        huge::after(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let q = unsafe { System.realloc(p, layout, new_size) };
        huge::after(q, new_size);
        q
    }
}

/// Tells glibc to serve blocks under [`ALONE`] from its heaps instead of a mapping
/// each, to keep up to [`KEEP`] free at a heap's top, and to grow a heap 64 MB at a
/// time; then switches on [`Allocator`]'s advice. A block freed and allocated again
/// is then not faulted in again. Returns whether glibc took the settings (where it
/// refuses the first, none is set and nothing changes). Call it first thing in
/// `main`, before any thread starts. Elsewhere than Linux with glibc it does nothing.
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets the allocator's parameters (under its lock).
        let taken = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, ALONE as i32) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP as i32) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
        };
        if taken {
            huge::start();
        }
        taken
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod huge {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// A transparent huge page on x86-64 (and most aarch64 kernels).
    const PAGE: usize = 2 << 20;
    /// glibc's heaps other than the main one are mappings of this size, aligned to
    /// it (`HEAP_MAX_SIZE` on 64-bit systems): a block's heap is the window of this
    /// size around it.
    pub(super) const WINDOW: usize = 64 << 20;

    /// How far the main heap (the program break) has been advised; 0 until [`start`].
    static BREAK_DONE: AtomicUsize = AtomicUsize::new(0);
    /// Below the break at [`start`] by a window: blocks from here to the break are
    /// in the main heap (the heap holds the few blocks made before `main`; other
    /// heaps and mappings lie far above it).
    static MAIN_FROM: AtomicUsize = AtomicUsize::new(0);

    /// How many heaps a thread remembers having advised.
    const REMEMBERED: usize = 8;

    thread_local! {
        /// The windows of the last [`REMEMBERED`] heaps other than the main one this
        /// thread advised (a thread gets blocks from its arena's heap, and from
        /// others' where it grows a block made elsewhere), and how many it advised.
        static SEEN: Cell<([usize; REMEMBERED], usize)> = const { Cell::new(([usize::MAX; REMEMBERED], 0)) };
    }

    pub(super) fn start() {
        // SAFETY: sbrk(0) only reads the current break.
        let brk = unsafe { libc::sbrk(0) } as usize;
        MAIN_FROM.store(brk.saturating_sub(WINDOW), Relaxed);
        BREAK_DONE.store(brk.max(1), Relaxed);
    }

    /// The whole huge pages in `[from, to)`, if any.
    pub(super) fn whole_pages(from: usize, to: usize) -> Option<(usize, usize)> {
        let (start, end) = (from.next_multiple_of(PAGE), to / PAGE * PAGE);
        (end > start).then_some((start, end))
    }

    /// Advises the whole huge pages in `[from, to)`, leaving `errno` as it was.
    pub(super) fn advise(from: usize, to: usize) {
        if let Some((start, end)) = whole_pages(from, to) {
            // SAFETY: MADV_HUGEPAGE changes how the pages are backed, never their
            // content, and allocates nothing; a refusal (transparent huge pages
            // compiled out) is ignored. errno is a thread-local int, restored.
            unsafe {
                let errno = *libc::__errno_location();
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
                *libc::__errno_location() = errno;
            }
        }
    }

    /// After glibc hands out `size` bytes at `p`: advises the main heap's growth
    /// since the last call; then a block of [`super::ALONE`] bytes or more whole
    /// (glibc maps it alone), or the heap of a block from another arena if it is not
    /// one this thread remembers advising.
    pub(super) fn after(p: *mut u8, size: usize) {
        let done = BREAK_DONE.load(Relaxed);
        if done == 0 || p.is_null() {
            return;
        }
        // SAFETY: sbrk(0) only reads the current break.
        let brk = unsafe { libc::sbrk(0) } as usize;
        if brk > done && BREAK_DONE.compare_exchange(done, brk, Relaxed, Relaxed).is_ok() {
            advise(done, brk);
        }
        let at = p as usize;
        if size >= super::ALONE {
            advise(at, at + size);
        } else if !(MAIN_FROM.load(Relaxed)..brk.max(done)).contains(&at) {
            let window = at & !(WINDOW - 1);
            let fresh = SEEN.try_with(|seen| {
                let (mut windows, n) = seen.get();
                let fresh = !windows.contains(&window);
                if fresh {
                    windows[n % REMEMBERED] = window;
                    seen.set((windows, n + 1));
                }
                fresh
            });
            if fresh == Ok(true) {
                advise(window, window + WINDOW);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod huge {
    pub(super) fn after(_: *mut u8, _: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of every size class, through [`Allocator`] after [`tune`]: contents kept
    /// by `realloc` (growing and shrinking), `alloc_zeroed` zero even where a block
    /// just freed was dirty.
    #[test]
    fn the_allocator_keeps_its_contract() {
        tune();
        for &size in &[1usize, 100, 4096, 200 << 10, 3 << 20, 70 << 20] {
            for &align in &[8usize, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes, valid alignments; every block is freed with
                // the layout it was allocated (or reallocated) with.
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null() && (p as usize).is_multiple_of(align), "{size} bytes aligned to {align}");
                    for i in 0..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                    let grown = Allocator.realloc(p, layout, 2 * size + 1);
                    assert!(!grown.is_null());
                    assert!((0..size).all(|i| *grown.add(i) == (i % 251) as u8), "{size} bytes grown");
                    let big = Layout::from_size_align(2 * size + 1, align).unwrap();
                    let shrunk = Allocator.realloc(grown, big, size.div_ceil(2));
                    assert!((0..size.div_ceil(2)).all(|i| *shrunk.add(i) == (i % 251) as u8), "{size} bytes shrunk");
                    let half = Layout::from_size_align(size.div_ceil(2), align).unwrap();
                    std::ptr::write_bytes(shrunk, 0xAB, size.div_ceil(2));
                    Allocator.dealloc(shrunk, half);
                    let z = Allocator.alloc_zeroed(half);
                    assert!((0..size.div_ceil(2)).all(|i| *z.add(i) == 0), "{size} bytes zeroed");
                    Allocator.dealloc(z, half);
                }
            }
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn whole_huge_pages_of_a_range() {
        const M: usize = 1 << 20;
        assert_eq!(huge::whole_pages(0, 2 * M), Some((0, 2 * M)));
        assert_eq!(huge::whole_pages(1, 4 * M), Some((2 * M, 4 * M)));
        assert_eq!(huge::whole_pages(1, 4 * M - 1), None);
        assert_eq!(huge::whole_pages(2 * M, 2 * M + 1), None);
        assert_eq!(huge::whole_pages(3 * M, 9 * M), Some((4 * M, 8 * M)));
        assert_eq!(huge::whole_pages(5 * M, 3 * M), None);
    }

    /// The `VmFlags` of the mapping that holds `addr`, from `/proc/self/smaps`.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn vm_flags_at(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.to_string();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    /// Whether the mapping that holds `addr` is advised for huge pages (`hg`).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn advised(addr: usize) -> bool {
        vm_flags_at(addr).split_whitespace().any(|f| f == "hg")
    }

    /// A private anonymous mapping of `len` bytes (unmapped by the caller).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn map(len: usize) -> usize {
        // SAFETY: a fresh private anonymous mapping.
        let m = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(m, libc::MAP_FAILED);
        m as usize
    }

    /// Does this kernel take the advice at all (transparent huge pages compiled in)?
    /// Asked of a mapping of the test's own. Where it does not, nothing is advised.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn kernel_takes_advice() -> bool {
        let len = 4 << 20;
        let m = map(len);
        // SAFETY: our own mapping, advised, then unmapped.
        unsafe {
            let r = libc::madvise(m as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
            libc::munmap(m as *mut libc::c_void, len);
            r == 0
        }
    }

    /// A block of [`ALONE`] bytes or more is advised whole, wherever glibc put it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_large_block_is_advised_whole() {
        assert!(tune(), "glibc refused the settings");
        let takes = kernel_takes_advice();
        let layout = Layout::from_size_align(ALONE + (8 << 20), 8).unwrap();
        // SAFETY: a valid layout, freed with it.
        let p = unsafe { Allocator.alloc(layout) } as usize;
        assert_ne!(p, 0);
        let (first, end) = huge::whole_pages(p, p + layout.size()).unwrap();
        let seen = (advised(first), advised(end - 1));
        // SAFETY: as allocated.
        unsafe { Allocator.dealloc(p as *mut u8, layout) };
        assert_eq!(seen, (takes, takes), "first and last whole huge page of the block at {p:#x}");
    }

    /// A block from another arena's heap (a 64 MB-aligned mapping of 64 MB, as glibc
    /// makes them; here one of the test's own) gets the whole heap advised, the first
    /// time a thread gets a block from it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn another_arenas_heap_is_advised() {
        assert!(tune(), "glibc refused the settings");
        let takes = kernel_takes_advice();
        let len = 2 * huge::WINDOW;
        let m = map(len);
        let heap = m.next_multiple_of(huge::WINDOW);
        assert!(!advised(heap + (8 << 20)));
        // A thread of its own, whose last heap is none yet.
        std::thread::spawn(move || huge::after((heap + 4096) as *mut u8, 1000)).join().unwrap();
        let seen = (advised(heap + (8 << 20)), advised(heap + huge::WINDOW - 1), advised(heap + huge::WINDOW));
        // SAFETY: our own mapping.
        unsafe { libc::munmap(m as *mut libc::c_void, len) };
        assert_eq!(seen, (takes, takes, false), "inside the heap, its last byte, the byte after it");
    }

    /// The main heap's growth is advised: the break moved by 8 MB, then any block.
    /// Run in a child process of this test binary (this test alone, one thread), so
    /// that moving the break races with no other thread's allocations.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_main_heaps_growth_is_advised() {
        const CHILD: &str = "EXPERTCAST_MEMORY_TEST_CHILD";
        if std::env::var_os(CHILD).is_some() {
            assert!(tune(), "glibc refused the settings");
            // SAFETY: only this thread allocates now; glibc takes a break moved by
            // someone else in its stride (it starts its next growth from there).
            let before = unsafe { libc::sbrk(8 << 20) } as usize;
            assert_ne!(before, usize::MAX, "sbrk failed");
            huge::after((before - 16) as *mut u8, 16);
            let (first, end) = huge::whole_pages(before, before + (8 << 20)).unwrap();
            assert_eq!((advised(first), advised(end - 1)), (kernel_takes_advice(), kernel_takes_advice()));
            return;
        }
        let o = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "memory::tests::the_main_heaps_growth_is_advised", "--test-threads", "1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && out.contains("1 passed"), "{out}{}", String::from_utf8_lossy(&o.stderr));
    }
}
