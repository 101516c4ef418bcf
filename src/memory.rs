//! The process's memory: the C library's allocator, told to keep what it frees, with
//! its heaps backed by transparent huge pages.
//!
//! A run allocates and frees many blocks of kilobytes to megabytes: decoded Parquet
//! pages, the dense loads, a layer's shares, window statistics, output columns. By
//! default glibc gives every block above 128 KB a mapping of its own and unmaps it
//! when it is freed, so the next such block is faulted in and zeroed again, 4 KB at a
//! time. On the bundled traces that was about 20,000 page faults and a sixth of the
//! run's CPU time (BENCHMARKS.md, twenty-fourth session). [`tune`] serves blocks from
//! the heaps and keeps freed memory for the next block; [`Allocator`] asks the kernel
//! for 2 MB pages under the heaps, so the memory a heap grows by is faulted in 512
//! times fewer pieces. This is what glibc's own `glibc.malloc.hugetlb=1` tunable
//! does, which can only be set in the environment before a process starts.
//!
//! Neither changes what any computation gives: the advice only says how memory is
//! backed, and where the kernel has transparent huge pages off (or on a system
//! without `madvise`) it is refused or absent and nothing changes.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator ([`System`]), which after [`tune`] also advises the memory
/// it hands out for transparent huge pages (`madvise(MADV_HUGEPAGE)`): the main
/// heap as it grows, and each 64 MB window a block comes from, once.
pub struct Allocator;

// SAFETY: every call is passed to `System` unchanged; `huge::after` only adds advice
// about how memory is backed, which changes no byte of it.
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

/// Tells glibc to serve blocks up to 1 GB from its heaps instead of a mapping each,
/// never to give a heap's free top back while the process runs, and to grow a heap
/// 64 MB at a time; then switches on [`Allocator`]'s advice. A block freed and
/// allocated again is then not faulted in again; the memory goes back to the system
/// when the process ends. Call it first thing in `main`, before any thread starts.
/// Elsewhere than Linux with glibc it does nothing.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets the allocator's parameters, before any other
        // thread exists to allocate.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
        huge::start();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod huge {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// A transparent huge page on x86-64 (and most aarch64 kernels).
    const PAGE: usize = 2 << 20;
    /// glibc's heaps other than the main one are mappings of this size, aligned to
    /// it (`HEAP_MAX_SIZE` on 64-bit systems); a window of this size is advised whole.
    const WINDOW: usize = 64 << 20;

    /// How far the main heap (the program break) has been advised; 0 until [`start`].
    static BREAK_DONE: AtomicUsize = AtomicUsize::new(0);
    /// Windows advised so far; when all are taken, later windows go unadvised.
    static WINDOWS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];

    thread_local! {
        /// The window this thread's last block came from (its arena's heap).
        static LAST: Cell<usize> = const { Cell::new(0) };
    }

    pub(super) fn start() {
        // SAFETY: sbrk(0) only reads the current break.
        let brk = unsafe { libc::sbrk(0) } as usize;
        BREAK_DONE.store(brk.max(1), Relaxed);
    }

    /// The whole huge pages in `[from, to)`, if any.
    pub(super) fn whole_pages(from: usize, to: usize) -> Option<(usize, usize)> {
        let (start, end) = (from.next_multiple_of(PAGE), to / PAGE * PAGE);
        (end > start).then_some((start, end))
    }

    /// Advises the whole huge pages in `[from, to)`.
    fn advise(from: usize, to: usize) {
        if let Some((start, end)) = whole_pages(from, to) {
            // SAFETY: MADV_HUGEPAGE changes how the pages are backed, never their
            // content; on a range not (wholly) mapped it fails and changes nothing
            // there, which is ignored, as is a kernel that refuses it.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }

    /// After glibc hands out `size` bytes at `p`: advises the main heap's growth
    /// since the last call, and `p`'s window if no block came from it before, or the
    /// block itself if it is larger than a window (glibc maps such a block alone
    /// when it does not fit a heap other than the main one).
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
        if size > WINDOW {
            advise(p as usize, p as usize + size);
        }
        let window = p as usize & !(WINDOW - 1);
        if LAST.try_with(|l| l.replace(window)) == Ok(window) {
            return;
        }
        for slot in &WINDOWS {
            match slot.compare_exchange(0, window, Relaxed, Relaxed) {
                Ok(_) => {
                    advise(window, window + WINDOW);
                    return;
                }
                Err(w) if w == window => return,
                Err(_) => {}
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

    /// A block handed out after [`tune`] lies in memory advised for huge pages (the
    /// kernel's `hg` flag on its mapping), where the kernel takes the advice at all.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_block_is_advised_for_huge_pages() {
        tune();
        // Does this kernel take the advice? Asked of a mapping of our own.
        // SAFETY: a fresh private anonymous mapping, advised, then unmapped.
        let takes = unsafe {
            let len = 4 << 20;
            let m = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            assert_ne!(m, libc::MAP_FAILED);
            let r = libc::madvise(m, len, libc::MADV_HUGEPAGE);
            libc::munmap(m, len);
            r == 0
        };
        let size = 8 << 20;
        let layout = Layout::from_size_align(size, 8).unwrap();
        // A block with a whole huge page inside the window it starts in (kept until
        // the end, so that the next try is another block).
        let mut blocks = Vec::new();
        let page = loop {
            // SAFETY: a valid layout, freed with it below.
            let p = unsafe { Allocator.alloc(layout) } as usize;
            assert_ne!(p, 0);
            blocks.push(p);
            let window_end = (p & !((64 << 20) - 1)) + (64 << 20);
            if let Some((page, _)) = huge::whole_pages(p, (p + size).min(window_end)) {
                break page;
            }
            assert!(blocks.len() < 4, "no 8 MB block with a whole huge page in its window");
        };
        let flags = vm_flags_at(page);
        for p in blocks {
            // SAFETY: as allocated.
            unsafe { Allocator.dealloc(p as *mut u8, layout) };
        }
        assert_eq!(flags.split_whitespace().any(|f| f == "hg"), takes, "VmFlags of {page:#x}:{flags}");
    }
}
