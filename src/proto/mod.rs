//! Generated prost types for the Core ML specification (see `proto/`).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod core_ml {
    pub mod specification {
        include!(concat!(env!("OUT_DIR"), "/core_ml.specification.rs"));
        pub mod mil_spec {
            include!(concat!(
                env!("OUT_DIR"),
                "/core_ml.specification.mil_spec.rs"
            ));
        }
    }
}

pub use core_ml::specification as spec;
pub use core_ml::specification::mil_spec as mil;
