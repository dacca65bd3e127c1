//! ca-models' build script: the shared libtorch link settings (`build-support/torch_link.rs`),
//! then the small C++ files of `csrc/` (activations, autocast) compiled against the libtorch
//! headers torch-sys used (`<libtorch>/include`, next to the `lib/` folder it exports).

#[path = "../../build-support/torch_link.rs"]
mod torch_link;

use std::path::PathBuf;

fn main() {
    torch_link::main();
    println!("cargo:rerun-if-changed=csrc/activations.cpp");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not export its libtorch lib folder (DEP_TCH_LIBTORCH_LIB)");
    let include = PathBuf::from(&lib).join("..").join("include");
    // The PyTorch 2.x wheels and the official libtorch archives use the C++11 ABI; torch-sys
    // reads the same variable with the same default.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/activations.cpp")
        .file("csrc/autocast.cpp")
        .compile("ca_native");
}
