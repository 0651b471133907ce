//! Stand-in for `cubecl-llvm` 0.11.3 without LLVM: the types `cubecl-cuda` 0.11.3 names, so
//! that it builds (offline) with its CUDA C++/NVRTC backend as the only working one. See
//! README.md.

use cubecl_core::ir::DeviceProperties;
use cubecl_core::ir::amd::GfxArch;
use cubecl_core::ir::nvidia::SmArch;
use cubecl_environment::backtrace::BackTrace;
use cubecl_runtime::compiler::{CompilationError, Compiler};
use cubecl_runtime::kernel::{BufferIOAttr, KernelDefinition};

/// What the LLVM backend would compile for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    /// The host CPU.
    #[default]
    Cpu,
    /// NVIDIA GPUs (PTX).
    Nvptx,
}

/// The NVPTX target's parts `cubecl-cuda` names.
pub mod nvptx {
    /// The PTX version the LLVM backend would emit.
    pub mod ptx_version {
        use core::fmt;

        /// A PTX ISA version (8.7 is 87).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct PtxVersion(u32);

        impl PtxVersion {
            /// The PTX version the LLVM backend would emit for a driver of CUDA `driver`. There
            /// is no LLVM backend in this build, so there is none to choose: always `None`
            /// (which `cubecl-cuda` reads as "the backend's default"; only its LLVM backend
            /// reads it at all).
            pub fn for_driver(_driver: i32) -> Option<Self> {
                None
            }
        }

        impl fmt::Display for PtxVersion {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "ptx{}", self.0)
            }
        }
    }
}

/// The LLVM backend's shared parts `cubecl-cuda` names.
pub mod shared {
    /// Device features narrowed to what the LLVM backend lowers.
    pub mod lowered_features {
        use super::super::DeviceProperties;

        /// The GPU target a device's features would be narrowed for.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum GpuTarget {
            /// NVIDIA GPUs.
            Nvptx,
        }

        /// `cubecl-cuda` narrows the device's advertised features with this only when the LLVM
        /// backend compiles its kernels, which never happens in this build (the `cpp` feature
        /// makes the NVRTC backend the default, and its features are the device's own), so
        /// there is nothing to take away.
        pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {}
    }
}

/// The LLVM backend's compiler: refuses every kernel (this build has no LLVM).
#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    /// The target it would compile for.
    pub target: LlvmTarget,
}

/// The LLVM backend's options, as `cubecl-cuda` fills them in.
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    /// AMD GPU architecture.
    pub arch: Option<GfxArch>,
    /// NVIDIA architecture.
    pub sm_arch: Option<SmArch>,
    /// PTX version.
    pub ptx_version: Option<nvptx::ptx_version::PtxVersion>,
    /// Scalars in the kernel parameter block.
    pub grid_constants: bool,
}

/// A module the NVPTX backend would have produced.
#[derive(Clone, Debug)]
pub struct NvptxModule {
    /// NUL-terminated PTX.
    pub ptx: Vec<core::ffi::c_char>,
    /// Kernel entry point.
    pub entrypoint: String,
    /// IR, for logs and cache keys.
    pub ir: String,
    /// Shared memory per launch, in bytes.
    pub shared_memory_size: usize,
    /// Buffer access modes in binding order.
    pub io: Vec<BufferIOAttr>,
}

/// What the LLVM backend would produce.
#[derive(Clone, Debug)]
pub enum PlironArtifact {
    /// PTX for NVIDIA GPUs.
    NvptxCode(NvptxModule),
}

impl core::fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlironArtifact::NvptxCode(module) => f.write_str(&module.ir),
        }
    }
}

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(CompilationError::Generic {
            reason: "this build of cubecl-cuda has no LLVM backend (rtune replaces cubecl-llvm \
                     so that it builds offline); its CUDA C++/NVRTC backend, which \
                     rtune-trainer's `cuda` feature selects with cubecl-cuda's `cpp` feature, \
                     compiles the kernels"
                .to_string(),
            backtrace: BackTrace::capture(),
        })
    }

    fn extension(&self) -> &'static str {
        "ll"
    }

    fn lang_tag(&self) -> &'static str {
        "llvm"
    }
}
