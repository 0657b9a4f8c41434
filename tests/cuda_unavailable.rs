//! Without an NVIDIA driver the CUDA backend says why it cannot run, through
//! the registry, and never panics. On a machine with a GPU it opens; with
//! `QUANTSCOPE_REQUIRE_CUDA=1` (the GPU check kit) it must.

use quantscope::backend::{self, BackendError, BackendKind};

#[test]
fn cuda_opens_or_says_why() {
    match backend::open(BackendKind::Cuda) {
        Ok(b) => {
            assert_eq!(b.kind(), BackendKind::Cuda);
            let info = b.info();
            assert!(info.compute_capability.is_some());
        }
        Err(BackendError::Unavailable { backend, reason }) => {
            assert!(
                std::env::var("QUANTSCOPE_REQUIRE_CUDA").as_deref() != Ok("1"),
                "QUANTSCOPE_REQUIRE_CUDA=1 but cuda is unavailable: {reason}"
            );
            assert_eq!(backend, BackendKind::Cuda);
            assert!(!reason.is_empty());
            let shown = BackendError::Unavailable { backend, reason }.to_string();
            assert!(shown.starts_with("cuda unavailable: "), "{shown}");
        }
        Err(e) => panic!("unexpected error opening cuda: {e}"),
    }
}

#[cfg(feature = "cuda")]
#[test]
fn no_libcuda_means_unavailable() {
    if backend::cuda::driver_available() {
        eprintln!("skipping no_libcuda_means_unavailable: libcuda is present");
        return;
    }
    match backend::open(BackendKind::Cuda) {
        Err(BackendError::Unavailable { reason, .. }) => {
            assert!(reason.contains("libcuda not found"), "{reason}")
        }
        Err(e) => panic!("expected unavailable, got {e}"),
        Ok(_) => panic!("opened cuda without libcuda"),
    }
    // The registry lists it as unavailable, and `available()` leaves it out.
    assert!(backend::available()
        .iter()
        .all(|b| b.kind() != BackendKind::Cuda));
}
