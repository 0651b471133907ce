//! The instruction sets the CPU kernels run on: detected once at run time, optionally capped by
//! the `RTUNE_TRAINER_ISA` environment variable.
//!
//! The binary is built for the baseline x86-64 target (SSE2), so it runs on any x86-64 CPU; the
//! matrix products ([`crate::matmul`]) and the fused kernels ([`crate::kernels`]) carry code
//! paths compiled for AVX2+FMA and for AVX-512, and the bf16 matrix products further ones for
//! AVX512_BF16 dot products and AMX-BF16 tiles. [`selected`] picks the best the CPU has.
//! Setting `RTUNE_TRAINER_ISA=avx2` makes an AVX-512 machine run the code an AVX2-only machine
//! runs (to measure it, or to compare), `generic` the portable code.

use std::sync::OnceLock;

/// The environment variable that caps the instruction set.
pub const ISA_ENV: &str = "RTUNE_TRAINER_ISA";

/// Instruction-set levels, each including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable code (SSE2 on x86-64, whatever the target allows elsewhere).
    Generic,
    /// AVX2 and FMA (x86-64-v3: Haswell and later, AMD Zen).
    Avx2,
    /// AVX-512 F, BW, DQ and VL (x86-64-v4: Skylake-SP and later, AMD Zen 4).
    Avx512,
    /// AVX-512 with AVX512_BF16 dot products (Cooper Lake, Sapphire Rapids, Zen 4): bf16 matrix
    /// products at twice the f32 rate.
    Avx512Bf16,
    /// AMX-BF16 tile matrix multiplication (Sapphire Rapids and later) for the bf16 products.
    Amx,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 5] = [
        Isa::Generic,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Bf16,
        Isa::Amx,
    ];

    /// The name used in `RTUNE_TRAINER_ISA` and in the benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Bf16 => "avx512-bf16",
            Isa::Amx => "amx",
        }
    }

    /// The level named `name` (as [`Isa::name`] writes it).
    pub fn parse(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.name() == name)
    }

    /// True when f32 code compiled for AVX-512 may run.
    pub fn has_avx512(self) -> bool {
        self >= Isa::Avx512
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A bad `RTUNE_TRAINER_ISA`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    /// Not one of the names.
    #[error(
        "{ISA_ENV}={0:?} is not an instruction set; use one of auto, generic, avx2, avx512, \
         avx512-bf16, amx (or unset it)"
    )]
    Unknown(String),
    /// A level this CPU (or its operating system) does not support.
    #[error(
        "{ISA_ENV}={requested} asks for more than this CPU supports ({detected}); use {detected} \
         or lower, or unset it"
    )]
    Unsupported {
        /// The requested level.
        requested: Isa,
        /// The best level the CPU supports.
        detected: Isa,
    },
}

/// The best level this CPU and operating system support.
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    if !(has!("avx2") && has!("fma")) {
        return Isa::Generic;
    }
    if !(has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl")) {
        return Isa::Avx2;
    }
    if !has!("avx512bf16") {
        return Isa::Avx512;
    }
    if !amx_usable() {
        return Isa::Avx512Bf16;
    }
    Isa::Amx
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Generic
}

/// AMX-BF16 needs the CPU feature (CPUID leaf 7: AMX-BF16 and AMX-TILE), the operating system's
/// support for the tile state (XCR0 bits 17 and 18) and, on Linux, the process's permission to
/// use it, which the kernel grants on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); without the
/// permission the first tile instruction kills the process with SIGILL.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_usable() -> bool {
    use std::arch::x86_64::{__cpuid_count, _xgetbv};
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    const XTILE_STATE: u64 = (1 << 17) | (1 << 18);
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    if !std::arch::is_x86_feature_detected!("xsave") {
        return false;
    }
    // SAFETY: CPUID is available on every x86-64 CPU; leaf 7 exists on every CPU with AVX-512
    // (checked by the caller). XGETBV is available: the xsave check above also means the OS
    // enabled it (OSXSAVE), which std's detection requires before reporting xsave.
    let (leaf7, xcr0) = unsafe { (__cpuid_count(7, 0), _xgetbv(0)) };
    if leaf7.edx & (AMX_BF16 | AMX_TILE) != (AMX_BF16 | AMX_TILE)
        || xcr0 & XTILE_STATE != XTILE_STATE
    {
        return false;
    }
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes this process's permission to
    // use the AMX tile state; it returns 0 when granted.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn amx_usable() -> bool {
    false
}

/// The level `RTUNE_TRAINER_ISA` asks for, checked against the CPU: the detected level when
/// the variable is unset, empty or `auto`.
pub fn from_env() -> Result<Isa, IsaError> {
    let requested = std::env::var(ISA_ENV).unwrap_or_default();
    resolve(requested.trim(), detected())
}

/// [`from_env`] for a given variable value and detected level.
pub fn resolve(requested: &str, detected: Isa) -> Result<Isa, IsaError> {
    if requested.is_empty() || requested == "auto" {
        return Ok(detected);
    }
    let isa = Isa::parse(requested).ok_or_else(|| IsaError::Unknown(requested.to_string()))?;
    if isa > detected {
        return Err(IsaError::Unsupported {
            requested: isa,
            detected,
        });
    }
    Ok(isa)
}

/// The level the kernels use: [`from_env`]'s answer, fixed at the first call. A bad variable
/// is reported by `rtune-train-lm` at start-up (it calls [`from_env`] first); a library user
/// who sets one gets a warning and the detected level.
pub fn selected() -> Isa {
    static SELECTED: OnceLock<Isa> = OnceLock::new();
    *SELECTED.get_or_init(|| {
        from_env().unwrap_or_else(|error| {
            tracing::warn!(%error, "using the detected instruction set");
            detected()
        })
    })
}
