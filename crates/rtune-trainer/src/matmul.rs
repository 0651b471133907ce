//! Matrix products of the CPU kernels: `C = alpha * A B (+ C) (+ bias)` for strided f32
//! matrices, with f32 inputs or with the inputs rounded to bf16 (f32 accumulation either way).
//!
//! A blocked GEMM (the BLIS loop structure: `KC`-deep blocks of B, `MC`-row blocks of A, an
//! `MR x NR` register-tile micro-kernel) with a micro-kernel per instruction set ([`Isa`]):
//! AVX2+FMA (6 x 16 f32), AVX-512 (8 x 32 f32), AVX512_BF16 dot products (8 x 32, two k per
//! instruction) and AMX-BF16 tiles (32 x 32, 32 k per tile product), plus portable code. The
//! f32 kernels read A in place when its rows are contiguous, and B in place when its rows are
//! contiguous and few tile rows would reuse a packed copy (fewer than 64 rows, or a small
//! block split over threads); otherwise they pack them (copy them into contiguous `MR`-row and
//! `NR`-column strips). A strided operand read in place costs a cache line per k step, at a
//! stride that for power-of-two widths maps the lines to the same few L1 sets, so that the
//! kernel waits on L2; packed, the kernel streams contiguous memory (a 2048 x 1536 x 512
//! product on two AVX-512 cores: 300 GFLOP/s in place, 375 packed; `examples/gemm_shapes.rs`
//! measures a training step's products). The bf16 kernels pack both operands, converting them.
//!
//! Why not the `gemm` crate (which burn's flex backend uses): it has no bf16 kernel, and it
//! picks its instruction set by itself, while this module takes it from
//! [`crate::isa::selected`], so `RTUNE_TRAINER_ISA=avx2` runs the AVX2 code on any machine.
//!
//! bf16 products round each input element to bf16 (round to nearest even) and accumulate in
//! f32, as PyTorch's CPU autocast (oneDNN) computes them. Without bf16 instructions the rounded
//! values are multiplied as f32, which gives the same products (a bf16 x bf16 product is exact
//! in f32).

use crate::isa::Isa;
use rayon::prelude::*;
use std::cell::RefCell;

/// A read-only matrix operand: element `(r, c)` is at `ptr + r * row_stride + c * col_stride`.
#[derive(Debug, Clone, Copy)]
pub struct Operand {
    /// The first element.
    pub ptr: *const f32,
    /// Distance between rows, in elements.
    pub row_stride: isize,
    /// Distance between columns, in elements.
    pub col_stride: isize,
}

// SAFETY: an Operand is only dereferenced inside `gemm`, whose caller guarantees the memory
// stays valid and unwritten for the call; the parallel tasks only read through it.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}

impl Operand {
    /// A row-major matrix with rows `row_stride` elements apart.
    pub fn rows(ptr: *const f32, row_stride: usize) -> Self {
        Self {
            ptr,
            row_stride: row_stride as isize,
            col_stride: 1,
        }
    }

    /// The transposed matrix (no copy).
    pub fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// The sub-matrix starting at `(row, col)`.
    ///
    /// # Safety
    /// `(row, col)` must lie inside the matrix.
    unsafe fn at(self, row: usize, col: usize) -> Self {
        Self {
            // SAFETY: forwarded from the caller.
            ptr: unsafe {
                self.ptr
                    .offset(row as isize * self.row_stride + col as isize * self.col_stride)
            },
            ..self
        }
    }
}

/// The precision the inputs of a product are multiplied in (the accumulation is f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputPrecision {
    /// f32 inputs.
    #[default]
    F32,
    /// Inputs rounded to bf16.
    Bf16,
}

/// One product `C[m x n] = alpha * A[m x k] B[k x n] (+ C if accumulate) (+ bias[n] per row)`.
#[derive(Debug, Clone, Copy)]
pub struct Gemm<'a> {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Add to C's values instead of overwriting them.
    pub accumulate: bool,
    /// Added to every row of C (length `n`).
    pub bias: Option<&'a [f32]>,
    /// The input precision.
    pub precision: InputPrecision,
    /// Split the work over rayon's threads (when it is big enough to pay).
    pub parallel: bool,
}

impl Gemm<'_> {
    /// `C = A B` in f32, on one thread.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self {
            m,
            n,
            k,
            alpha: 1.0,
            accumulate: false,
            bias: None,
            precision: InputPrecision::F32,
            parallel: false,
        }
    }
}

/// Computes `spec` into `dst` (row-major, rows `dst_row_stride` apart, columns contiguous) on
/// the instruction set `isa`. Without `accumulate`, `dst` may hold anything before (every
/// element is written).
///
/// # Safety
/// `a` must address a valid `m x k` matrix, `b` a valid `k x n` one and `dst` a writable
/// `m x n` one that overlaps neither; `isa` must be supported by the CPU
/// ([`crate::isa::detected`] or lower).
pub unsafe fn gemm(
    isa: Isa,
    spec: &Gemm<'_>,
    dst: *mut f32,
    dst_row_stride: usize,
    a: Operand,
    b: Operand,
) {
    if let Some(bias) = spec.bias {
        assert_eq!(bias.len(), spec.n, "bias length must be the column count");
    }
    if spec.m == 0 || spec.n == 0 {
        return;
    }
    let dst = Dst {
        ptr: dst,
        row_stride: dst_row_stride as isize,
    };
    let bf16 = spec.precision == InputPrecision::Bf16;
    // SAFETY: forwarded from the caller; each kernel is only chosen on a level that has its
    // instructions.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Amx if bf16 => run::<x86::AmxBf16>(spec, dst, a, b),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 | Isa::Amx if bf16 => run::<x86::Avx512DotBf16>(spec, dst, a, b),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx if bf16 => {
                run::<x86::Avx512F32<true>>(spec, dst, a, b)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx => {
                run::<x86::Avx512F32<false>>(spec, dst, a, b)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 if bf16 => run::<x86::Avx2F32<true>>(spec, dst, a, b),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => run::<x86::Avx2F32<false>>(spec, dst, a, b),
            _ if bf16 => run::<Portable<true>>(spec, dst, a, b),
            _ => run::<Portable<false>>(spec, dst, a, b),
        }
    }
}

/// The destination matrix (columns contiguous).
#[derive(Clone, Copy)]
struct Dst {
    ptr: *mut f32,
    row_stride: isize,
}

// SAFETY: the parallel tasks of `run` write disjoint tiles of the destination.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    /// The element `(row, col)`.
    ///
    /// # Safety
    /// `(row, col)` must lie inside the matrix.
    unsafe fn at(&self, row: usize, col: usize) -> *mut f32 {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.ptr
                .offset(row as isize * self.row_stride + col as isize)
        }
    }
}

/// What a micro-kernel reads: element `(r, p)` of an A panel at
/// `ptr + r * row_stride + p * col_stride`, element `(p, c)` of a B panel at
/// `ptr + p * row_stride + c` (in units of the kernel's element type; `p` counts the kernel's
/// k steps).
#[derive(Debug, Clone, Copy)]
struct Panel<T> {
    ptr: *const T,
    row_stride: isize,
    col_stride: isize,
}

// SAFETY: as for Operand: panels only read memory that stays valid and unwritten for the
// product.
unsafe impl<T> Send for Panel<T> {}
unsafe impl<T> Sync for Panel<T> {}

impl<T> Panel<T> {
    /// The same panel moved `elements` forward.
    ///
    /// # Safety
    /// The result must stay inside the memory the panel addresses.
    unsafe fn advanced(self, elements: isize) -> Self {
        Self {
            // SAFETY: forwarded from the caller.
            ptr: unsafe { self.ptr.offset(elements) },
            ..self
        }
    }
}

/// Where and how a micro-kernel writes its `rows x cols` tile.
struct TileOut {
    /// The tile's first element in C.
    c: *mut f32,
    row_stride: isize,
    rows: usize,
    cols: usize,
    alpha: f32,
    /// Add to C's values (a later k block, or `Gemm::accumulate`).
    load_c: bool,
    /// The bias of the tile's first column, or null.
    bias: *const f32,
}

/// Rounds `x` to bf16 (nearest even; NaN stays NaN) and returns its bits, without branches so
/// that packing loops vectorise.
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x40;
    if x.is_nan() { nan } else { rounded }
}

/// `x` rounded to bf16, as f32.
#[inline(always)]
fn round_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// Two bf16 values in one 32-bit word: `low` (the even k) in the low half.
#[inline(always)]
fn bf16_pair(low: f32, high: f32) -> u32 {
    bf16_bits(low) | (bf16_bits(high) << 16)
}

/// A micro-kernel with its packed-operand layouts and block sizes.
trait Kernel {
    /// Element of the operands the kernel reads (f32, or a pair of bf16 in a u32).
    type Elem: Copy + Send + Sync + 'static;
    /// Rows of the register tile.
    const MR: usize;
    /// Columns of the register tile.
    const NR: usize;
    /// k values per element (2 for bf16 pairs).
    const K_PER_ELEM: usize;
    /// The packed k extent is padded with zeros to a multiple of this many k values.
    const K_UNIT: usize;
    /// k extent of one block.
    const KC: usize;
    /// Rows of one A block (a multiple of `MR`).
    const MC: usize;
    /// Columns of one B block (a multiple of `NR`).
    const NC: usize;
    /// True when the kernel reads f32 operands in place (`Elem` is f32, no rounding).
    const IN_PLACE: bool;

    /// Packs `rows x kc` of `a` into `MR`-row strips; returns the panel of strip 0 and the
    /// distance between strips.
    ///
    /// # Safety
    /// `a` must address a valid `rows x kc` matrix; `dst` must hold
    /// `rows.div_ceil(MR) * MR * kcp / K_PER_ELEM` elements.
    unsafe fn pack_a(
        a: Operand,
        rows: usize,
        kc: usize,
        kcp: usize,
        dst: &mut [Self::Elem],
    ) -> (Panel<Self::Elem>, usize);

    /// Packs `kc x cols` of `b` into `NR`-column strips; returns the panel of strip 0 and the
    /// distance between strips.
    ///
    /// # Safety
    /// As `pack_a`, for `cols.div_ceil(NR)` strips of `NR` columns.
    unsafe fn pack_b(
        b: Operand,
        kc: usize,
        cols: usize,
        kcp: usize,
        dst: &mut [Self::Elem],
    ) -> (Panel<Self::Elem>, usize);

    /// Multiplies an A panel by a B panel over `kcp` k values and writes the tile.
    ///
    /// # Safety
    /// The panels must address `MR x kcp` and `kcp x NR` values (A rows at or past
    /// `out.rows` are not read); `out` must address a writable tile; the CPU must have the
    /// kernel's instructions.
    unsafe fn tile(kcp: usize, a: Panel<Self::Elem>, b: Panel<Self::Elem>, out: &TileOut);

    /// Prepares the calling thread before its first `tile` (AMX: loads the tile
    /// configuration).
    fn begin_task() {}

    /// Undoes `begin_task`.
    fn end_task() {}
}

thread_local! {
    /// Packing buffers, reused across calls (f32 values or bf16 pairs, both 32-bit).
    static PACK_A: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static PACK_B: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's packing buffer `key` (or a fresh one if it is in use) viewed as
/// `len` elements of `T`.
fn with_buffer<T: Copy + 'static, R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<u32>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    const { assert!(size_of::<T>() == 4 && align_of::<T>() <= 4) };
    let view = |buffer: &mut Vec<u32>| {
        if buffer.len() < len {
            buffer.resize(len, 0);
        }
        // SAFETY: T is a 4-byte plain value type (f32 or u32; asserted above) for which every
        // bit pattern is valid, and the buffer holds at least len words.
        unsafe { std::slice::from_raw_parts_mut(buffer.as_mut_ptr().cast::<T>(), len) }
    };
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => f(view(&mut buffer)),
        // Re-entered on this thread (rayon ran another product while this one waited).
        Err(_) => f(view(&mut Vec::new())),
    })
}

/// Packs `outer x kc` of `src` into `W`-row strips of `[p][W]` f32 (k-major), zero-padded to
/// `W` rows and `kcp` k. With `AVX2` (for the kernels of that level and above) a whole strip
/// of a source whose rows run along k is transposed in 8 x 8 blocks of vectors.
///
/// # Safety
/// `src` must address a valid `outer x kc` matrix; `dst` must hold `outer.div_ceil(W) * W *
/// kcp` values; with `AVX2`, the CPU must have AVX2.
unsafe fn pack_f32<const W: usize, const ROUND: bool, const AVX2: bool>(
    src: Operand,
    outer: usize,
    kc: usize,
    kcp: usize,
    dst: &mut [f32],
) {
    let convert = |x: f32| if ROUND { round_bf16(x) } else { x };
    for (s, strip) in dst.chunks_exact_mut(W * kcp).enumerate() {
        let r0 = s * W;
        let rows = W.min(outer - r0);
        if rows < W || kc < kcp {
            strip.fill(0.0);
        }
        let out = strip.as_mut_ptr();
        // SAFETY: (r0 + r, p) lies inside src for r < rows, p < kc; p * W + r < W * kcp.
        unsafe {
            let base = src.ptr.offset(r0 as isize * src.row_stride);
            #[cfg(target_arch = "x86_64")]
            if AVX2 && !ROUND && src.col_stride == 1 && rows == W && W.is_multiple_of(8) {
                // The scalar loop below stores one value per k step, W values apart (a
                // transposed B: a linear layer's dX = dY W^T, attention's K^T).
                x86::pack_transposed_avx2::<W>(base, src.row_stride, kc, out);
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            if AVX2 && !ROUND && src.row_stride == 1 && rows == W && W.is_multiple_of(8) {
                // Whole strip rows, copied in vectors: the compiler leaves the loop below
                // scalar (the pointers might alias), a load and a store per value.
                x86::copy_rows_avx2::<W>(base, src.col_stride, kc, out);
                continue;
            }
            if src.col_stride == 1 {
                for r in 0..rows {
                    let row = base.offset(r as isize * src.row_stride);
                    for p in 0..kc {
                        *out.add(p * W + r) = convert(*row.add(p));
                    }
                }
            } else {
                for p in 0..kc {
                    let col = base.offset(p as isize * src.col_stride);
                    let to = out.add(p * W);
                    if src.row_stride == 1 {
                        for r in 0..rows {
                            *to.add(r) = convert(*col.add(r));
                        }
                    } else {
                        for r in 0..rows {
                            *to.add(r) = convert(*col.offset(r as isize * src.row_stride));
                        }
                    }
                }
            }
        }
    }
}

/// Runs the blocked loops of one product with kernel `K`.
///
/// # Safety
/// As [`gemm`], for a CPU with `K`'s instructions.
unsafe fn run<K: Kernel>(spec: &Gemm<'_>, dst: Dst, a: Operand, b: Operand) {
    let Gemm { m, n, k, .. } = *spec;
    if k == 0 {
        // SAFETY: dst addresses m x n writable values (caller).
        unsafe { bias_only(spec, dst) };
        return;
    }
    let threads = if spec.parallel && m * n * k >= PARALLEL_MIN_WORK {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    // A blocks: at least one per thread, about MC rows each, whole micro-tiles.
    let blocks = m
        .div_ceil(K::MC)
        .next_multiple_of(threads)
        .min(m.div_ceil(K::MR));
    let mc = m.div_ceil(blocks).next_multiple_of(K::MR);
    let m_blocks = m.div_ceil(mc);
    let (a_in_place, b_in_place) = in_place::<K>(m, n, threads, a, b);
    for jc in (0..n).step_by(K::NC) {
        let nb = (n - jc).min(K::NC);
        let n_strips = nb.div_ceil(K::NR);
        // Fewer A blocks than threads: the B strips are shared out as well.
        let n_groups = threads.div_ceil(m_blocks).min(n_strips);
        let strips_per_group = n_strips.div_ceil(n_groups);
        for pc in (0..k).step_by(K::KC) {
            let kb = (k - pc).min(K::KC);
            let kcp = kb.next_multiple_of(K::K_UNIT);
            let elems = kcp / K::K_PER_ELEM;
            // In place: only a partial last strip is packed (its missing columns as zeros).
            let packed_strips = if !b_in_place {
                0..n_strips
            } else if nb % K::NR != 0 {
                n_strips - 1..n_strips
            } else {
                n_strips..n_strips
            };
            let packed_cols = (packed_strips.start * K::NR).min(nb);
            let b_len = packed_strips.len() * K::NR * elems;
            with_buffer::<K::Elem, _>(&PACK_B, b_len, |b_pack| {
                let (b_panel0, b_strip_len) = if b_len > 0 {
                    let cols = nb - packed_cols;
                    let strip_len = K::NR * elems;
                    // A big B block is packed by all threads: packed by one, the others would
                    // wait for it (a tenth of the time of a 512-row product).
                    let chunk_strips = if threads > 1 && kb * cols >= PARALLEL_PACK_MIN {
                        packed_strips.len().div_ceil(threads)
                    } else {
                        packed_strips.len()
                    };
                    // SAFETY: the kb x cols block at (pc, jc + packed_cols) lies inside B;
                    // b_pack holds its strips, each chunk the strips of its columns.
                    let pack = |(chunk, dst): (usize, &mut [K::Elem])| unsafe {
                        let first = chunk * chunk_strips * K::NR;
                        let at = b.at(pc, jc + packed_cols + first);
                        K::pack_b(at, kb, (cols - first).min(chunk_strips * K::NR), kcp, dst)
                    };
                    let (panel, len) = if chunk_strips < packed_strips.len() {
                        b_pack
                            .par_chunks_mut(chunk_strips * strip_len)
                            .enumerate()
                            .map(pack)
                            .collect::<Vec<_>>()[0]
                    } else {
                        pack((0, b_pack))
                    };
                    debug_assert_eq!(len, strip_len);
                    (panel, strip_len)
                } else {
                    (
                        Panel {
                            ptr: std::ptr::null(),
                            row_stride: 0,
                            col_stride: 0,
                        },
                        0,
                    )
                };
                let b_panel = |js: usize| {
                    if packed_strips.contains(&js) {
                        let strip = (js - packed_strips.start) * b_strip_len;
                        // SAFETY: strip js - start of the packed strips.
                        unsafe { b_panel0.advanced(strip as isize) }
                    } else {
                        // SAFETY: (pc, jc + js * NR) lies inside B.
                        let at = unsafe { b.at(pc, jc + js * K::NR) };
                        Panel {
                            ptr: at.ptr.cast::<K::Elem>(),
                            row_stride: b.row_stride,
                            col_stride: 1,
                        }
                    }
                };
                let load_c = spec.accumulate || pc > 0;
                let task = |task: usize| {
                    let (block, group) = (task / n_groups, task % n_groups);
                    let ic = block * mc;
                    let rows = (m - ic).min(mc);
                    // SAFETY: the rows x kb block at (ic, pc) lies inside A.
                    let a_block = unsafe { a.at(ic, pc) };
                    let a_len = if a_in_place {
                        0
                    } else {
                        rows.div_ceil(K::MR) * K::MR * elems
                    };
                    with_buffer::<K::Elem, _>(&PACK_A, a_len, |a_pack| {
                        let (a_panel0, a_strip_len) = if a_in_place {
                            let panel = Panel {
                                ptr: a_block.ptr.cast::<K::Elem>(),
                                row_stride: a_block.row_stride,
                                col_stride: a_block.col_stride,
                            };
                            (panel, 0)
                        } else {
                            // SAFETY: a_pack holds the block's strips.
                            unsafe { K::pack_a(a_block, rows, kb, kcp, a_pack) }
                        };
                        K::begin_task();
                        let first = group * strips_per_group;
                        for js in first..(first + strips_per_group).min(n_strips) {
                            let col = jc + js * K::NR;
                            let b_strip = b_panel(js);
                            for is in 0..rows.div_ceil(K::MR) {
                                let row = ic + is * K::MR;
                                let a_strip = if a_in_place {
                                    let offset = (is * K::MR) as isize * a_panel0.row_stride;
                                    // SAFETY: row `row` is inside A.
                                    unsafe { a_panel0.advanced(offset) }
                                } else {
                                    // SAFETY: strip `is` of the packed block.
                                    unsafe { a_panel0.advanced((is * a_strip_len) as isize) }
                                };
                                let out = TileOut {
                                    // SAFETY: (row, col) lies inside C.
                                    c: unsafe { dst.at(row, col) },
                                    row_stride: dst.row_stride,
                                    rows: (m - row).min(K::MR),
                                    cols: (n - col).min(K::NR),
                                    alpha: spec.alpha,
                                    load_c,
                                    bias: match spec.bias {
                                        Some(bias) if pc == 0 => bias[col..].as_ptr(),
                                        _ => std::ptr::null(),
                                    },
                                };
                                // SAFETY: the panels cover the tile over kcp; the tile lies
                                // inside C and no other task writes it (tasks own disjoint
                                // row blocks x strip groups).
                                unsafe { K::tile(kcp, a_strip, b_strip, &out) };
                            }
                        }
                        K::end_task();
                    });
                };
                let tasks = m_blocks * n_groups;
                if tasks > 1 && threads > 1 {
                    (0..tasks).into_par_iter().for_each(task);
                } else {
                    (0..tasks).for_each(task);
                }
            });
        }
    }
}

/// Whether kernel `K` reads A and B in place (`(a, b)`) for an `m x n` product on `threads`
/// threads; otherwise it packs them.
///
/// In place saves the copy, but a strided operand is read one cache line per k step, at a
/// stride that for the model's power-of-two widths maps most lines to the same few L1 sets,
/// so that every load goes to L2: a transposed A (a weight gradient's `X^T`) always, a B once
/// its strips are deeper than a few k. So A is read in place when its rows are contiguous
/// (the micro-kernel then streams `MR` rows) or when few columns would reuse a packed copy,
/// and B is packed when enough tile rows reuse each packed strip to pay for the copy; over
/// several threads, where the B block is packed in a parallel pass of its own, also enough
/// work per block to pay for that pass.
fn in_place<K: Kernel>(m: usize, n: usize, threads: usize, a: Operand, b: Operand) -> (bool, bool) {
    let a_in_place = K::IN_PLACE && (a.col_stride == 1 || n < PACK_A_MIN_COLS);
    let reuse = m >= PACK_B_MIN_ROWS && (threads == 1 || m * n.min(K::NC) >= PACK_B_MIN_BLOCK);
    let b_in_place = K::IN_PLACE && b.col_stride == 1 && !reuse;
    (a_in_place, b_in_place)
}

/// Columns of C below which A is read in place even when transposed: a packed A value is
/// used once per column, and over fewer columns the copy costs more than the strided reads
/// (attention's backward products, 256 x 64 x 256 per head: 160 GFLOP/s with A packed, 200
/// in place).
const PACK_A_MIN_COLS: usize = 128;

/// Rows below which B is read in place when it can be.
const PACK_B_MIN_ROWS: usize = 64;

/// Rows x columns of a block of C below which B is read in place over several threads.
const PACK_B_MIN_BLOCK: usize = 1 << 17;

/// Below this many B values a block of B is packed on one thread.
const PARALLEL_PACK_MIN: usize = 1 << 15;

/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// `C = (C if accumulate else 0) + bias` for an empty inner dimension.
///
/// # Safety
/// `dst` must address a writable `m x n` matrix.
unsafe fn bias_only(spec: &Gemm<'_>, dst: Dst) {
    for r in 0..spec.m {
        // SAFETY: row r of the destination, written before it is read.
        unsafe {
            let row = dst.at(r, 0);
            if !spec.accumulate {
                std::ptr::write_bytes(row, 0, spec.n);
            }
            if let Some(bias) = spec.bias {
                for (j, b) in bias.iter().enumerate() {
                    *row.add(j) += b;
                }
            }
        }
    }
}

/// The f32 packing of a kernel with `MR x NR` tiles: strips `[p][MR]` and `[p][NR]`.
macro_rules! f32_packing {
    ($mr:literal, $nr:literal, $round:ident, $avx2:literal) => {
        unsafe fn pack_a(
            a: Operand,
            rows: usize,
            kc: usize,
            kcp: usize,
            dst: &mut [f32],
        ) -> (Panel<f32>, usize) {
            // SAFETY: forwarded.
            unsafe { pack_f32::<$mr, $round, $avx2>(a, rows, kc, kcp, dst) };
            let panel = Panel {
                ptr: dst.as_ptr(),
                row_stride: 1,
                col_stride: $mr,
            };
            (panel, $mr * kcp)
        }

        unsafe fn pack_b(
            b: Operand,
            kc: usize,
            cols: usize,
            kcp: usize,
            dst: &mut [f32],
        ) -> (Panel<f32>, usize) {
            // SAFETY: forwarded (B's columns are the strips' rows).
            unsafe { pack_f32::<$nr, $round, $avx2>(b.t(), cols, kc, kcp, dst) };
            let panel = Panel {
                ptr: dst.as_ptr(),
                row_stride: $nr,
                col_stride: 1,
            };
            (panel, $nr * kcp)
        }
    };
}

/// Portable kernel (4 x 8 tile; the compiler vectorises it for the baseline target).
struct Portable<const ROUND: bool>;

impl<const ROUND: bool> Kernel for Portable<ROUND> {
    type Elem = f32;
    const MR: usize = 4;
    const NR: usize = 8;
    const K_PER_ELEM: usize = 1;
    const K_UNIT: usize = 1;
    const KC: usize = 256;
    const MC: usize = 64;
    const NC: usize = 1024;
    const IN_PLACE: bool = !ROUND;

    f32_packing!(4, 8, ROUND, false);

    unsafe fn tile(kcp: usize, a: Panel<f32>, b: Panel<f32>, out: &TileOut) {
        let mut acc = [[0f32; 8]; 4];
        // SAFETY: rows below out.rows and kcp k of each panel are valid (caller).
        unsafe {
            let rows = std::array::from_fn::<_, 4, _>(|i| {
                a.ptr.offset(i.min(out.rows - 1) as isize * a.row_stride)
            });
            for p in 0..kcp {
                let b_row = std::slice::from_raw_parts(b.ptr.offset(p as isize * b.row_stride), 8);
                for (acc, row) in acc.iter_mut().zip(rows) {
                    let x = *row.offset(p as isize * a.col_stride);
                    for (c, &y) in acc.iter_mut().zip(b_row) {
                        *c += x * y;
                    }
                }
            }
            write_tile(&acc, out);
        }
    }
}

/// Writes a tile held in an array (any instruction set).
///
/// # Safety
/// `out` must address a writable `rows x cols` tile.
unsafe fn write_tile<const NR: usize>(acc: &[[f32; NR]], out: &TileOut) {
    for (r, acc) in acc.iter().enumerate().take(out.rows) {
        for (j, &value) in acc.iter().enumerate().take(out.cols) {
            // SAFETY: (r, j) lies inside the tile; the bias has a value per tile column.
            unsafe {
                let c = out.c.offset(r as isize * out.row_stride).add(j);
                let mut v = out.alpha * value;
                if out.load_c {
                    v += *c;
                }
                if !out.bias.is_null() {
                    v += *out.bias.add(j);
                }
                *c = v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Kernel, Operand, Panel, TileOut, bf16_pair, pack_f32};
    use std::arch::x86_64::*;

    /// The A rows of a tile, rows past `out.rows` repeating the last one (never read past the
    /// matrix).
    ///
    /// # Safety
    /// Rows below `out.rows` of the panel must be valid.
    #[inline(always)]
    unsafe fn tile_rows<T, const MR: usize>(a: Panel<T>, out: &TileOut) -> [*const T; MR] {
        // SAFETY: forwarded from the caller.
        std::array::from_fn(|i| unsafe {
            a.ptr.offset(i.min(out.rows - 1) as isize * a.row_stride)
        })
    }

    /// Packs `W` rows of `kc` contiguous values (rows `row_stride` apart, from `base`) into
    /// `[p][W]` at `out`, transposing 8 rows x 8 k at a time in registers.
    ///
    /// # Safety
    /// The `W x kc` source and the `kc x W` destination must be valid; the CPU must have AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack_transposed_avx2<const W: usize>(
        base: *const f32,
        row_stride: isize,
        kc: usize,
        out: *mut f32,
    ) {
        let full = kc / 8 * 8;
        for r0 in (0..W).step_by(8) {
            // SAFETY (all accesses): rows r0..r0 + 8 < W of the source, k below kc; the
            // destination's k rows of W values.
            let rows: [*const f32; 8] =
                std::array::from_fn(|i| unsafe { base.offset((r0 + i) as isize * row_stride) });
            for p in (0..full).step_by(8) {
                let v: [__m256; 8] =
                    std::array::from_fn(|i| unsafe { _mm256_loadu_ps(rows[i].add(p)) });
                // Pairs of rows interleaved, then 4-row columns, then the 128-bit halves:
                // t[j] ends up as column p + j of the 8 rows.
                let lo = |a, b| _mm256_unpacklo_ps(a, b);
                let hi = |a, b| _mm256_unpackhi_ps(a, b);
                let u = [
                    lo(v[0], v[1]),
                    hi(v[0], v[1]),
                    lo(v[2], v[3]),
                    hi(v[2], v[3]),
                    lo(v[4], v[5]),
                    hi(v[4], v[5]),
                    lo(v[6], v[7]),
                    hi(v[6], v[7]),
                ];
                // w[0..4]: columns 0-3 (low half) and 4-7 (high half) of rows 0-3; w[4..8]
                // the same of rows 4-7.
                let w = [
                    _mm256_shuffle_ps::<0x44>(u[0], u[2]),
                    _mm256_shuffle_ps::<0xee>(u[0], u[2]),
                    _mm256_shuffle_ps::<0x44>(u[1], u[3]),
                    _mm256_shuffle_ps::<0xee>(u[1], u[3]),
                    _mm256_shuffle_ps::<0x44>(u[4], u[6]),
                    _mm256_shuffle_ps::<0xee>(u[4], u[6]),
                    _mm256_shuffle_ps::<0x44>(u[5], u[7]),
                    _mm256_shuffle_ps::<0xee>(u[5], u[7]),
                ];
                for j in 0..4 {
                    let low = _mm256_permute2f128_ps::<0x20>(w[j], w[j + 4]);
                    let high = _mm256_permute2f128_ps::<0x31>(w[j], w[j + 4]);
                    unsafe {
                        _mm256_storeu_ps(out.add((p + j) * W + r0), low);
                        _mm256_storeu_ps(out.add((p + j + 4) * W + r0), high);
                    }
                }
            }
            for p in full..kc {
                for (i, row) in rows.iter().enumerate() {
                    unsafe { *out.add(p * W + r0 + i) = *row.add(p) };
                }
            }
        }
    }

    /// Copies `kc` rows of `W` contiguous values (rows `stride` apart, from `base`) into
    /// `[p][W]` at `out`, 8 values per instruction (a memcpy call per row cost more than the
    /// copy: 3% of a large-2t step).
    ///
    /// # Safety
    /// The `kc x W` source and destination must be valid; the CPU must have AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn copy_rows_avx2<const W: usize>(
        base: *const f32,
        stride: isize,
        kc: usize,
        out: *mut f32,
    ) {
        for p in 0..kc {
            // SAFETY: row p of the source and of the destination, W values each.
            unsafe {
                let from = base.offset(p as isize * stride);
                for c in (0..W).step_by(8) {
                    _mm256_storeu_ps(out.add(p * W + c), _mm256_loadu_ps(from.add(c)));
                }
            }
        }
    }

    /// AVX2+FMA kernel: 6 x 16 f32 tile (12 accumulators of 8).
    pub struct Avx2F32<const ROUND: bool>;

    impl<const ROUND: bool> Kernel for Avx2F32<ROUND> {
        type Elem = f32;
        const MR: usize = 6;
        const NR: usize = 16;
        const K_PER_ELEM: usize = 1;
        const K_UNIT: usize = 1;
        const KC: usize = 256;
        const MC: usize = 96;
        const NC: usize = 1024;
        const IN_PLACE: bool = !ROUND;

        f32_packing!(6, 16, ROUND, true);

        unsafe fn tile(kcp: usize, a: Panel<f32>, b: Panel<f32>, out: &TileOut) {
            // SAFETY: forwarded; the caller checked the CPU has AVX2 and FMA.
            unsafe { tile_avx2(kcp, a, b, out) }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2(kcp: usize, a: Panel<f32>, b: Panel<f32>, out: &TileOut) {
        let mut c0 = [_mm256_setzero_ps(); 6];
        let mut c1 = [_mm256_setzero_ps(); 6];
        // SAFETY: the panels cover the tile over kcp (caller).
        unsafe {
            let rows = tile_rows::<f32, 6>(a, out);
            let mut b_row = b.ptr;
            let mut offset = 0isize;
            for _ in 0..kcp {
                let b0 = _mm256_loadu_ps(b_row);
                let b1 = _mm256_loadu_ps(b_row.add(8));
                for i in 0..6 {
                    let x = _mm256_set1_ps(*rows[i].offset(offset));
                    c0[i] = _mm256_fmadd_ps(x, b0, c0[i]);
                    c1[i] = _mm256_fmadd_ps(x, b1, c1[i]);
                }
                b_row = b_row.offset(b.row_stride);
                offset += a.col_stride;
            }
        }
        let alpha = _mm256_set1_ps(out.alpha);
        // Lane masks for partial tiles: lane j is on when j < cols (within each half).
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(out.cols.min(8) as i32), lanes);
        let mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(out.cols.saturating_sub(8) as i32), lanes);
        // SAFETY: masked loads and stores touch only the tile's `cols` columns; the bias has a
        // value per column.
        unsafe {
            let (bias0, bias1) = if out.bias.is_null() {
                (_mm256_setzero_ps(), _mm256_setzero_ps())
            } else {
                (
                    _mm256_maskload_ps(out.bias, mask0),
                    _mm256_maskload_ps(out.bias.add(8), mask1),
                )
            };
            for i in 0..out.rows {
                let row = out.c.offset(i as isize * out.row_stride);
                let mut v0 = _mm256_fmadd_ps(c0[i], alpha, bias0);
                let mut v1 = _mm256_fmadd_ps(c1[i], alpha, bias1);
                if out.load_c {
                    v0 = _mm256_add_ps(v0, _mm256_maskload_ps(row, mask0));
                    v1 = _mm256_add_ps(v1, _mm256_maskload_ps(row.add(8), mask1));
                }
                _mm256_maskstore_ps(row, mask0, v0);
                _mm256_maskstore_ps(row.add(8), mask1, v1);
            }
        }
    }

    /// AVX-512 kernel: 8 x 32 f32 tile (16 accumulators of 16).
    pub struct Avx512F32<const ROUND: bool>;

    impl<const ROUND: bool> Kernel for Avx512F32<ROUND> {
        type Elem = f32;
        const MR: usize = 8;
        const NR: usize = 32;
        const K_PER_ELEM: usize = 1;
        const K_UNIT: usize = 1;
        const KC: usize = 256;
        const MC: usize = 128;
        const NC: usize = 1024;
        const IN_PLACE: bool = !ROUND;

        f32_packing!(8, 32, ROUND, true);

        unsafe fn tile(kcp: usize, a: Panel<f32>, b: Panel<f32>, out: &TileOut) {
            // SAFETY: forwarded; the caller checked the CPU has AVX-512.
            unsafe { tile_avx512(kcp, a, b, out) }
        }
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    unsafe fn tile_avx512(kcp: usize, a: Panel<f32>, b: Panel<f32>, out: &TileOut) {
        let mut c0 = [_mm512_setzero_ps(); 8];
        let mut c1 = [_mm512_setzero_ps(); 8];
        // SAFETY: the panels cover the tile over kcp (caller).
        unsafe {
            let rows = tile_rows::<f32, 8>(a, out);
            let mut b_row = b.ptr;
            let mut offset = 0isize;
            for _ in 0..kcp {
                let b0 = _mm512_loadu_ps(b_row);
                let b1 = _mm512_loadu_ps(b_row.add(16));
                for i in 0..8 {
                    let x = _mm512_set1_ps(*rows[i].offset(offset));
                    c0[i] = _mm512_fmadd_ps(x, b0, c0[i]);
                    c1[i] = _mm512_fmadd_ps(x, b1, c1[i]);
                }
                b_row = b_row.offset(b.row_stride);
                offset += a.col_stride;
            }
            write_tile_avx512(&c0, &c1, out)
        }
    }

    /// Writes 16-lane accumulator pairs (row i: columns 0..16 in `c0[i]`, 16..32 in `c1[i]`).
    ///
    /// # Safety
    /// `out` must address a writable `rows x cols` tile with `rows <= c0.len()`, `cols <= 32`.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    #[inline]
    unsafe fn write_tile_avx512(c0: &[__m512], c1: &[__m512], out: &TileOut) {
        let alpha = _mm512_set1_ps(out.alpha);
        let cols = u32::MAX.checked_shr(32 - out.cols as u32).unwrap_or(0);
        let (mask0, mask1) = (cols as __mmask16, (cols >> 16) as __mmask16);
        // SAFETY: masked loads and stores touch only the tile's `cols` columns.
        unsafe {
            let (bias0, bias1) = if out.bias.is_null() {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            } else {
                (
                    _mm512_maskz_loadu_ps(mask0, out.bias),
                    _mm512_maskz_loadu_ps(mask1, out.bias.add(16)),
                )
            };
            for i in 0..out.rows {
                let row = out.c.offset(i as isize * out.row_stride);
                let mut v0 = _mm512_fmadd_ps(c0[i], alpha, bias0);
                let mut v1 = _mm512_fmadd_ps(c1[i], alpha, bias1);
                if out.load_c {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, row));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, row.add(16)));
                }
                _mm512_mask_storeu_ps(row, mask0, v0);
                _mm512_mask_storeu_ps(row.add(16), mask1, v1);
            }
        }
    }

    /// AVX512_BF16 kernel: 8 x 32 tile, `vdpbf16ps` multiplies two k per instruction.
    /// Packed A: strips of 8 rows of `kcp / 2` bf16 pairs (`[r][q]`); packed B: strips of
    /// `[q][32]` pairs.
    pub struct Avx512DotBf16;

    impl Kernel for Avx512DotBf16 {
        type Elem = u32;
        const MR: usize = 8;
        const NR: usize = 32;
        const K_PER_ELEM: usize = 2;
        const K_UNIT: usize = 2;
        const KC: usize = 512;
        const MC: usize = 128;
        const NC: usize = 1024;
        const IN_PLACE: bool = false;

        unsafe fn pack_a(
            a: Operand,
            rows: usize,
            kc: usize,
            kcp: usize,
            dst: &mut [u32],
        ) -> (Panel<u32>, usize) {
            let pairs = kcp / 2;
            // SAFETY: forwarded; the caller checked the CPU has AVX512_BF16.
            unsafe { pack_dot_a(a, rows, kc, kcp, dst) };
            let panel = Panel {
                ptr: dst.as_ptr(),
                row_stride: pairs as isize,
                col_stride: 1,
            };
            (panel, 8 * pairs)
        }

        unsafe fn pack_b(
            b: Operand,
            kc: usize,
            cols: usize,
            kcp: usize,
            dst: &mut [u32],
        ) -> (Panel<u32>, usize) {
            let pairs = kcp / 2;
            // SAFETY: forwarded; the caller checked the CPU has AVX512_BF16.
            unsafe { pack_dot_b(b.t(), cols, kc, kcp, dst) };
            let panel = Panel {
                ptr: dst.as_ptr(),
                row_stride: 32,
                col_stride: 1,
            };
            (panel, 32 * pairs)
        }

        unsafe fn tile(kcp: usize, a: Panel<u32>, b: Panel<u32>, out: &TileOut) {
            // SAFETY: forwarded; the caller checked the CPU has AVX512_BF16.
            unsafe { tile_dot_bf16(kcp, a, b, out) }
        }
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")]
    unsafe fn tile_dot_bf16(kcp: usize, a: Panel<u32>, b: Panel<u32>, out: &TileOut) {
        let mut c0 = [_mm512_setzero_ps(); 8];
        let mut c1 = [_mm512_setzero_ps(); 8];
        // SAFETY: the packed strips hold kcp / 2 pairs per row and column.
        unsafe {
            let rows = tile_rows::<u32, 8>(a, out);
            let mut b_row = b.ptr;
            let mut offset = 0isize;
            for _ in 0..kcp / 2 {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b_row.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b_row.add(16).cast()));
                for i in 0..8 {
                    let pair = *rows[i].offset(offset) as i32;
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    c0[i] = _mm512_dpbf16_ps(c0[i], x, b0);
                    c1[i] = _mm512_dpbf16_ps(c1[i], x, b1);
                }
                b_row = b_row.offset(b.row_stride);
                offset += a.col_stride;
            }
            write_tile_avx512(&c0, &c1, out)
        }
    }

    /// AMX-BF16 kernel: a 32 x 32 f32 tile as four 16 x 16 tile registers (tmm0-3), fed per 32
    /// k by two 16 x 32 bf16 A tiles (tmm4-5) and two 32 x 16 B tiles (tmm6-7).
    ///
    /// Packed A strip: per 32 k, 32 rows of 16 bf16 pairs (two 16-row tiles, rows 64 bytes
    /// apart). Packed B strip: per 32 k, two 16-column halves of 16 pair-rows x 16 columns
    /// (AMX's pair layout for B), rows 64 bytes apart.
    pub struct AmxBf16;

    /// The tile configuration (palette 1; eight 16-row x 64-byte tiles).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const TILE_CONFIG: TileConfig = {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        let mut t = 0;
        while t < 8 {
            // colsb (bytes per row) of tile t at 16 + 2t, little-endian; rows at 48 + t.
            bytes[16 + 2 * t] = 64;
            bytes[48 + t] = 16;
            t += 1;
        }
        TileConfig(bytes)
    };

    /// Words (bf16 pairs) per 32 k of a packed 32-row or 32-column strip.
    const BLOCK: usize = 32 * 16;

    impl Kernel for AmxBf16 {
        type Elem = u32;
        const MR: usize = 32;
        const NR: usize = 32;
        const K_PER_ELEM: usize = 2;
        const K_UNIT: usize = 32;
        const KC: usize = 512;
        const MC: usize = 128;
        const NC: usize = 1024;
        const IN_PLACE: bool = false;

        unsafe fn pack_a(
            a: Operand,
            rows: usize,
            kc: usize,
            kcp: usize,
            dst: &mut [u32],
        ) -> (Panel<u32>, usize) {
            let len = 32 * kcp / 2;
            // SAFETY: forwarded; AMX-BF16 CPUs have AVX512_BF16.
            unsafe { pack_amx_a(a, rows, kc, kcp, dst) };
            let panel = Panel {
                ptr: dst.as_ptr(),
                row_stride: 0,
                col_stride: 0,
            };
            (panel, len)
        }

        unsafe fn pack_b(
            b: Operand,
            kc: usize,
            cols: usize,
            kcp: usize,
            dst: &mut [u32],
        ) -> (Panel<u32>, usize) {
            let len = 32 * kcp / 2;
            // SAFETY: forwarded; AMX-BF16 CPUs have AVX512_BF16.
            unsafe { pack_amx_b(b.t(), cols, kc, kcp, dst) };
            let panel = Panel {
                ptr: dst.as_ptr(),
                row_stride: 0,
                col_stride: 0,
            };
            (panel, len)
        }

        unsafe fn tile(kcp: usize, a: Panel<u32>, b: Panel<u32>, out: &TileOut) {
            // SAFETY: forwarded; begin_task configured the tiles on this thread.
            unsafe { tile_amx(kcp, a.ptr, b.ptr, out) }
        }

        fn begin_task() {
            // SAFETY: loads a valid palette-1 configuration; the process has the AMX
            // permission (requested when the level was detected, crate::isa).
            unsafe {
                std::arch::asm!(
                    "ldtilecfg [{}]",
                    in(reg) TILE_CONFIG.0.as_ptr(),
                    options(nostack, readonly)
                )
            };
        }

        fn end_task() {
            // SAFETY: returns the tile registers to their initial state.
            unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    unsafe fn tile_amx(kcp: usize, a: *const u32, b: *const u32, out: &TileOut) {
        const ROW_BYTES: usize = 64;
        // A whole tile without scale or bias (most of them) goes between C and the tile
        // registers directly: loaded into the accumulators when C is added to, stored from
        // them at the end. Otherwise the result goes through a buffer.
        let direct = out.rows == 32 && out.cols == 32 && out.alpha == 1.0 && out.bias.is_null();
        let c_stride = out.row_stride as usize * size_of::<f32>();
        // SAFETY: the tile registers are configured (begin_task); C loads and stores touch the
        // 32 x 32 tile `out` addresses; every A and B load reads 16 rows of 64 bytes inside the
        // packed strips, whose k extent is kcp (a multiple of 32).
        unsafe {
            if direct && out.load_c {
                std::arch::asm!(
                    "tileloadd tmm0, [{c00} + {stride}*1]",
                    "tileloadd tmm1, [{c01} + {stride}*1]",
                    "tileloadd tmm2, [{c10} + {stride}*1]",
                    "tileloadd tmm3, [{c11} + {stride}*1]",
                    c00 = in(reg) out.c,
                    c01 = in(reg) out.c.add(16),
                    c10 = in(reg) out.c.offset(16 * out.row_stride),
                    c11 = in(reg) out.c.offset(16 * out.row_stride).add(16),
                    stride = in(reg) c_stride,
                    options(nostack, readonly)
                );
            } else {
                std::arch::asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            for block in 0..kcp / 32 {
                let a = a.add(block * BLOCK);
                let b = b.add(block * BLOCK);
                std::arch::asm!(
                    "tileloadd tmm4, [{a0} + {stride}*1]",
                    "tileloadd tmm5, [{a1} + {stride}*1]",
                    "tileloadd tmm6, [{b0} + {stride}*1]",
                    "tileloadd tmm7, [{b1} + {stride}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a,
                    a1 = in(reg) a.add(256),
                    b0 = in(reg) b,
                    b1 = in(reg) b.add(256),
                    stride = in(reg) ROW_BYTES,
                    options(nostack, readonly)
                );
            }
        }
        let (target, stride) = if direct {
            (out.c, c_stride)
        } else {
            (std::ptr::null_mut(), 128)
        };
        // The four 16 x 16 results into C, or into one 32 x 32 row-major buffer.
        let mut buffer = std::mem::MaybeUninit::<Aligned>::uninit();
        let base = if direct {
            target
        } else {
            buffer.as_mut_ptr().cast::<f32>()
        };
        let row = stride / size_of::<f32>();
        // SAFETY: each store writes 16 rows of 64 bytes, `stride` apart, inside the C tile or
        // the buffer.
        unsafe {
            std::arch::asm!(
                "tilestored [{c00} + {stride}*1], tmm0",
                "tilestored [{c01} + {stride}*1], tmm1",
                "tilestored [{c10} + {stride}*1], tmm2",
                "tilestored [{c11} + {stride}*1], tmm3",
                c00 = in(reg) base,
                c01 = in(reg) base.add(16),
                c10 = in(reg) base.add(16 * row),
                c11 = in(reg) base.add(16 * row + 16),
                stride = in(reg) stride,
                options(nostack)
            );
        }
        if direct {
            return;
        }
        let mut c0 = [_mm512_setzero_ps(); 32];
        let mut c1 = [_mm512_setzero_ps(); 32];
        for i in 0..out.rows {
            // SAFETY: row i of the buffer, written by the tile stores.
            unsafe {
                c0[i] = _mm512_load_ps(base.add(i * 32));
                c1[i] = _mm512_load_ps(base.add(i * 32 + 16));
            }
        }
        // SAFETY: forwarded.
        unsafe { write_tile_avx512(&c0, &c1, out) }
    }

    /// [`Avx512DotBf16`]'s A strips: rows of `kcp / 2` pairs, 8 rows per strip.
    ///
    /// # Safety
    /// `a` must address a valid `rows x kc` matrix, `dst` hold the strips; AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")]
    unsafe fn pack_dot_a(a: Operand, rows: usize, kc: usize, kcp: usize, dst: &mut [u32]) {
        let pairs = kcp / 2;
        let padded = rows.next_multiple_of(8);
        let out = dst.as_mut_ptr();
        // SAFETY: row x < padded of the [x][q] layout lies inside dst.
        unsafe {
            pack_pair_blocks(
                a,
                rows,
                kc,
                kcp,
                padded,
                Orientation::ByOuter,
                |x, qb, row| store(out.add(x * pairs + qb * 16), (pairs - qb * 16).min(16), row),
            )
        }
    }

    /// [`Avx512DotBf16`]'s B strips: `[q][32]` pairs per 32 columns.
    ///
    /// # Safety
    /// `b_t` must address a valid `cols x kc` matrix (B transposed), `dst` hold the strips;
    /// AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")]
    unsafe fn pack_dot_b(b_t: Operand, cols: usize, kc: usize, kcp: usize, dst: &mut [u32]) {
        let pairs = kcp / 2;
        let padded = cols.next_multiple_of(32);
        let out = dst.as_mut_ptr();
        // SAFETY: strip x / 32, pair row q, column x % 32 (+ 16 lanes) lies inside dst.
        unsafe {
            pack_pair_blocks(
                b_t,
                cols,
                kc,
                kcp,
                padded,
                Orientation::ByPair,
                |x, q, row| store(out.add((x / 32) * 32 * pairs + q * 32 + x % 32), 16, row),
            )
        }
    }

    /// [`AmxBf16`]'s A strips.
    ///
    /// # Safety
    /// As [`pack_dot_a`].
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")]
    unsafe fn pack_amx_a(a: Operand, rows: usize, kc: usize, kcp: usize, dst: &mut [u32]) {
        let len = 32 * kcp / 2;
        let padded = rows.next_multiple_of(32);
        let out = dst.as_mut_ptr();
        // SAFETY: strip x / 32, block qb, row x % 32 lies inside dst.
        unsafe {
            pack_pair_blocks(
                a,
                rows,
                kc,
                kcp,
                padded,
                Orientation::ByOuter,
                |x, qb, row| {
                    store(
                        out.add((x / 32) * len + qb * BLOCK + (x % 32) * 16),
                        16,
                        row,
                    )
                },
            )
        }
    }

    /// [`AmxBf16`]'s B strips.
    ///
    /// # Safety
    /// As [`pack_dot_b`].
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")]
    unsafe fn pack_amx_b(b_t: Operand, cols: usize, kc: usize, kcp: usize, dst: &mut [u32]) {
        let len = 32 * kcp / 2;
        let padded = cols.next_multiple_of(32);
        let out = dst.as_mut_ptr();
        // SAFETY: strip x / 32, block q / 16, half, pair row q % 16 lies inside dst.
        unsafe {
            pack_pair_blocks(
                b_t,
                cols,
                kc,
                kcp,
                padded,
                Orientation::ByPair,
                |x, q, row| {
                    let half = (x % 32) / 16;
                    let at = (x / 32) * len + (q / 16) * BLOCK + half * 256 + (q % 16) * 16;
                    store(out.add(at), 16, row)
                },
            )
        }
    }

    /// Stores the first `lanes` (at most 16) 32-bit lanes of `row` at `ptr`.
    ///
    /// # Safety
    /// The lanes written must lie inside the packing buffer.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    #[inline]
    unsafe fn store(ptr: *mut u32, lanes: usize, row: __m512i) {
        // SAFETY: forwarded from the caller.
        unsafe {
            if lanes >= 16 {
                _mm512_storeu_si512(ptr.cast(), row);
            } else {
                _mm512_mask_storeu_epi32(ptr.cast(), lane_mask(lanes), row);
            }
        }
    }

    /// How [`pack_pair_blocks`] hands over each block of 16 x 16 bf16 pairs.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Orientation {
        /// One 16-pair row per outer index: `emit(x, q_block, row)`, lanes the pairs
        /// `16 * q_block ..` of row `x` (A panels: k runs along each row).
        ByOuter,
        /// One 16-wide row per pair index: `emit(x0, q, row)`, lanes the outer indices
        /// `x0 .. x0 + 16` (B panels: the columns run along each row).
        ByPair,
    }

    /// The lane mask of the first `count` (at most 16) lanes.
    #[inline(always)]
    fn lane_mask(count: usize) -> __mmask16 {
        ((1u32 << count.min(16)) - 1) as __mmask16
    }

    /// Packs `outer x kc` of `src` (element `(x, k)`) as bf16 pairs, zero-padded to `padded`
    /// outer indices and `kcp` k, in blocks of 16 outer indices x 16 pairs (32 k), handing
    /// each block's rows to `emit` in `orientation`. Vectorised: a block is 32 loads, 16
    /// conversions (`vcvtne2ps2bf16`, round to nearest even; like the other bf16 instructions
    /// it treats subnormal inputs as zero) and, when the source runs the other way than the
    /// rows handed over, one 16 x 16 transpose.
    ///
    /// # Safety
    /// `src` must address a valid `outer x kc` matrix; `emit` must store inside the buffer;
    /// the CPU must have AVX-512 BW and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")]
    #[inline]
    unsafe fn pack_pair_blocks(
        src: Operand,
        outer: usize,
        kc: usize,
        kcp: usize,
        padded: usize,
        orientation: Orientation,
        mut emit: impl FnMut(usize, usize, __m512i),
    ) {
        let pairs = kcp / 2;
        for x0 in (0..padded).step_by(16) {
            let xs = outer.saturating_sub(x0).min(16);
            for qb in 0..pairs.div_ceil(16) {
                let k0 = qb * 32;
                let ks = kc.saturating_sub(k0).min(32);
                // SAFETY: the block's valid part, xs x ks at (x0, k0), lies inside src.
                let (mut rows, by_outer) = unsafe { pair_block(src, (x0, xs), (k0, ks)) };
                if by_outer != (orientation == Orientation::ByOuter) {
                    transpose_16x16(&mut rows);
                }
                match orientation {
                    Orientation::ByOuter => {
                        for (x, row) in rows.iter().enumerate().take(padded - x0) {
                            emit(x0 + x, qb, *row);
                        }
                    }
                    Orientation::ByPair => {
                        for (q, row) in rows.iter().enumerate().take(pairs - qb * 16) {
                            emit(x0, qb * 16 + q, *row);
                        }
                    }
                }
            }
        }
    }

    /// The bf16 pairs of the `xs x ks` block of `src` at `(x0, k0)` (zeros outside it), as 16
    /// rows, and whether they run by outer index (`true`: row x holds pairs 0..16) or by pair
    /// (`false`: row q holds outer indices 0..16), whichever the source's layout gives
    /// without a transpose.
    ///
    /// # Safety
    /// The block's valid part must lie inside `src`.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")]
    #[inline]
    unsafe fn pair_block(
        src: Operand,
        (x0, xs): (usize, usize),
        (k0, ks): (usize, usize),
    ) -> ([__m512i; 16], bool) {
        let mut rows = [_mm512_setzero_si512(); 16];
        // SAFETY (all loads): masked to the valid xs x ks part of the block.
        if src.col_stride == 1 {
            // k runs along memory: each outer index's 32 k are two loads and one conversion.
            let (low, high) = (lane_mask(ks), lane_mask(ks.saturating_sub(16)));
            for (x, row) in rows.iter_mut().enumerate().take(xs) {
                unsafe {
                    let at = src
                        .ptr
                        .offset((x0 + x) as isize * src.row_stride + k0 as isize);
                    let lo = _mm512_maskz_loadu_ps(low, at);
                    let hi = _mm512_maskz_loadu_ps(high, at.add(16));
                    *row = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                }
            }
            (rows, true)
        } else if src.row_stride == 1 {
            // The outer index runs along memory: pair q interleaves k rows 2q and 2q + 1.
            let valid = lane_mask(xs);
            // Word 2c of the result takes word c (k even), word 2c + 1 word 16 + c (k odd).
            let interleave = _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
            );
            let load = |k: usize| {
                if k < ks {
                    unsafe {
                        let at = src
                            .ptr
                            .offset((k0 + k) as isize * src.col_stride + x0 as isize);
                        _mm512_maskz_loadu_ps(valid, at)
                    }
                } else {
                    _mm512_setzero_ps()
                }
            };
            for (q, row) in rows.iter_mut().enumerate().take(ks.div_ceil(2)) {
                let (even, odd) = (load(2 * q), load(2 * q + 1));
                let words: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(odd, even)) };
                *row = _mm512_permutexvar_epi16(interleave, words);
            }
            (rows, false)
        } else {
            // Neither direction contiguous (no product of the trainer has this): one value at
            // a time.
            for (x, row) in rows.iter_mut().enumerate().take(xs) {
                let mut words = [0u32; 16];
                for (q, word) in words.iter_mut().enumerate() {
                    let value = |k: usize| {
                        if k < ks {
                            unsafe {
                                *src.ptr.offset(
                                    (x0 + x) as isize * src.row_stride
                                        + (k0 + k) as isize * src.col_stride,
                                )
                            }
                        } else {
                            0.0
                        }
                    };
                    *word = bf16_pair(value(2 * q), value(2 * q + 1));
                }
                *row = unsafe { _mm512_loadu_si512(words.as_ptr().cast()) };
            }
            (rows, true)
        }
    }

    /// Transposes a 16 x 16 matrix of 32-bit values held as 16 rows.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    #[inline]
    fn transpose_16x16(rows: &mut [__m512i; 16]) {
        let r = *rows;
        // Within 128-bit lanes: 2 x 2 blocks of 32-bit values, then of 64-bit pairs.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        let mut u = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
            u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
            u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
            u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
        }
        // u[4b + j] holds columns j, j + 4, j + 8, j + 12 of rows 4b..4b + 4, one per 128-bit
        // lane. Gather the lanes of the same column: first across row groups (0, 1) and (2,
        // 3), then across the halves.
        let mut v = [_mm512_setzero_si512(); 16];
        for half in 0..2 {
            for j in 0..4 {
                let (a, b) = (u[8 * half + j], u[8 * half + 4 + j]);
                v[8 * half + 2 * j] = _mm512_shuffle_i32x4::<0x88>(a, b);
                v[8 * half + 2 * j + 1] = _mm512_shuffle_i32x4::<0xdd>(a, b);
            }
        }
        // v[2j] holds columns j and j + 8 (rows 0-3, 4-7 of the half); v[2j + 1] columns
        // j + 4 and j + 12.
        for j in 0..4 {
            for (offset, lane) in [(0, 2 * j), (4, 2 * j + 1)] {
                let (a, b) = (v[lane], v[8 + lane]);
                rows[j + offset] = _mm512_shuffle_i32x4::<0x88>(a, b);
                rows[j + offset + 8] = _mm512_shuffle_i32x4::<0xdd>(a, b);
            }
        }
    }

    #[repr(C, align(64))]
    struct Aligned([f32; 32 * 32]);
}
