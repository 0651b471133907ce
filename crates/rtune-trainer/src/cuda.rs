//! What a CUDA run needs at run time, checked before burn's CUDA backend starts: that backend
//! panics (in a worker thread) when the driver or NVRTC cannot be loaded or there is no GPU,
//! where `rtune-train-lm --device cuda` should stop with a message that says what to install.

use std::ffi::{CStr, c_void};

/// Something a CUDA run needs is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaUnavailable {
    /// No driver library.
    #[error(
        "--device cuda: cannot load the NVIDIA driver (libcuda.so.1): install an NVIDIA driver \
         (for CUDA 13.2 or later), or put the directory of its libcuda.so.1 on LD_LIBRARY_PATH"
    )]
    Driver,
    /// The driver does not start or sees no GPU.
    #[error("--device cuda: the NVIDIA driver reports {0}")]
    NoDevice(String),
    /// No NVRTC.
    #[error(
        "--device cuda: cannot load NVRTC (libnvrtc.so.13), which compiles the CUDA kernels at \
         run time: put the lib directory of a CUDA 13 toolkit, of NVIDIA's nvidia-cuda-nvrtc \
         wheel or of torch's nvidia/cu13 on LD_LIBRARY_PATH (crates/rtune-trainer/README.md, GPU)"
    )]
    Nvrtc,
    /// No CUDA headers for NVRTC.
    #[error(
        "--device cuda: NVRTC needs CUDA's headers and {0} has no include/cuda_fp16.h: set \
         CUDA_PATH to a CUDA 13 toolkit or to the nvidia/cu13 directory of NVIDIA's PyPI wheels \
         (crates/rtune-trainer/README.md, GPU)"
    )]
    Headers(String),
}

/// Loads the first of `names` the dynamic loader finds (the library stays loaded).
fn load_library(names: &[&CStr]) -> Option<*mut c_void> {
    names.iter().find_map(|name| {
        // SAFETY: dlopen with a NUL-terminated name; loading the driver or NVRTC runs their
        // initialisers, as burn's CUDA backend would right after.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        (!handle.is_null()).then_some(handle)
    })
}

/// Checks that the driver loads and sees a GPU, that NVRTC loads and that CUDA's headers are
/// where burn's CUDA backend looks for them (`CUDA_PATH`, else `/usr/local/cuda`, ...).
pub fn preflight() -> Result<(), CudaUnavailable> {
    let driver = load_library(&[c"libcuda.so.1", c"libcuda.so"]).ok_or(CudaUnavailable::Driver)?;
    let symbol = |name: &CStr| {
        // SAFETY: looks a symbol up in the loaded driver.
        let found = unsafe { libc::dlsym(driver, name.as_ptr()) };
        (!found.is_null()).then_some(found)
    };
    let missing = || CudaUnavailable::NoDevice("no cuInit / cuDeviceGetCount".into());
    let (init, count) = (
        symbol(c"cuInit").ok_or_else(missing)?,
        symbol(c"cuDeviceGetCount").ok_or_else(missing)?,
    );
    type CuInit = extern "C" fn(libc::c_uint) -> libc::c_int;
    type CuDeviceGetCount = extern "C" fn(*mut libc::c_int) -> libc::c_int;
    // SAFETY: the driver API's signatures: CUresult cuInit(unsigned int) and
    // CUresult cuDeviceGetCount(int *).
    let (init, count) = unsafe {
        (
            std::mem::transmute::<*mut c_void, CuInit>(init),
            std::mem::transmute::<*mut c_void, CuDeviceGetCount>(count),
        )
    };
    let status = init(0);
    if status != 0 {
        return Err(CudaUnavailable::NoDevice(format!(
            "CUDA error {status} when it starts (cuInit)"
        )));
    }
    let mut devices: libc::c_int = 0;
    let status = count(&mut devices);
    if status != 0 || devices < 1 {
        return Err(CudaUnavailable::NoDevice(format!(
            "{devices} GPUs (cuDeviceGetCount: CUDA status {status})"
        )));
    }
    load_library(&[c"libnvrtc.so.13", c"libnvrtc.so"]).ok_or(CudaUnavailable::Nvrtc)?;
    let cuda_path = cubecl_cuda::install::cuda_path();
    let headers = cuda_path
        .as_ref()
        .is_some_and(|path| path.join("include/cuda_fp16.h").is_file());
    if !headers {
        let place = cuda_path.map_or_else(
            || "no CUDA_PATH (nor /usr/local/cuda)".to_string(),
            |path| path.display().to_string(),
        );
        return Err(CudaUnavailable::Headers(place));
    }
    Ok(())
}
