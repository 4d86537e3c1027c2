//! `model.mlmodel`: decoding the Core ML `Model` protobuf, refusing models
//! that are not ML Programs, and the spec version ↔ opset ↔ OS table.

use crate::proto::spec::{model, Model};
use prost::Message;

/// What is wrong with a `model.mlmodel`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The bytes are not a valid `Model` protobuf.
    #[error("malformed protobuf: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The model is of another type than `mlProgram`.
    #[error("model type is {name} (field {tag}); only mlProgram models are supported")]
    NotMlProgram {
        /// The type's field name in `Model.Type`.
        name: &'static str,
        /// Its field number.
        tag: u32,
    },
    /// The `Type` oneof is unset.
    #[error("model has no type (empty Model.Type); only mlProgram models are supported")]
    NoType,
}

/// Decodes and checks that the model is an ML Program.
pub fn decode(bytes: &[u8]) -> Result<Model, ModelError> {
    let m = Model::decode(bytes)?;
    check_ml_program(&m)?;
    Ok(m)
}

/// Encodes a model (deterministic: maps are `BTreeMap`s).
pub fn encode(m: &Model) -> Vec<u8> {
    m.encode_to_vec()
}

fn check_ml_program(m: &Model) -> Result<(), ModelError> {
    use model::Type as T;
    let (name, tag) = match &m.r#type {
        None => return Err(ModelError::NoType),
        Some(T::MlProgram(_)) => return Ok(()),
        Some(T::PipelineClassifier(_)) => ("pipelineClassifier", 200),
        Some(T::PipelineRegressor(_)) => ("pipelineRegressor", 201),
        Some(T::Pipeline(_)) => ("pipeline", 202),
        Some(T::GlmRegressor(_)) => ("glmRegressor", 300),
        Some(T::SupportVectorRegressor(_)) => ("supportVectorRegressor", 301),
        Some(T::TreeEnsembleRegressor(_)) => ("treeEnsembleRegressor", 302),
        Some(T::NeuralNetworkRegressor(_)) => ("neuralNetworkRegressor", 303),
        Some(T::BayesianProbitRegressor(_)) => ("bayesianProbitRegressor", 304),
        Some(T::GlmClassifier(_)) => ("glmClassifier", 400),
        Some(T::SupportVectorClassifier(_)) => ("supportVectorClassifier", 401),
        Some(T::TreeEnsembleClassifier(_)) => ("treeEnsembleClassifier", 402),
        Some(T::NeuralNetworkClassifier(_)) => ("neuralNetworkClassifier", 403),
        Some(T::KNearestNeighborsClassifier(_)) => ("kNearestNeighborsClassifier", 404),
        Some(T::NeuralNetwork(_)) => ("neuralNetwork", 500),
        Some(T::ItemSimilarityRecommender(_)) => ("itemSimilarityRecommender", 501),
        Some(T::CustomModel(_)) => ("customModel", 555),
        Some(T::LinkedModel(_)) => ("linkedModel", 556),
        Some(T::ClassConfidenceThresholding(_)) => ("classConfidenceThresholding", 560),
        Some(T::OneHotEncoder(_)) => ("oneHotEncoder", 600),
        Some(T::Imputer(_)) => ("imputer", 601),
        Some(T::FeatureVectorizer(_)) => ("featureVectorizer", 602),
        Some(T::DictVectorizer(_)) => ("dictVectorizer", 603),
        Some(T::Scaler(_)) => ("scaler", 604),
        Some(T::CategoricalMapping(_)) => ("categoricalMapping", 606),
        Some(T::Normalizer(_)) => ("normalizer", 607),
        Some(T::ArrayFeatureExtractor(_)) => ("arrayFeatureExtractor", 609),
        Some(T::NonMaximumSuppression(_)) => ("nonMaximumSuppression", 610),
        Some(T::Identity(_)) => ("identity", 900),
        Some(T::TextClassifier(_)) => ("textClassifier", 2000),
        Some(T::WordTagger(_)) => ("wordTagger", 2001),
        Some(T::VisionFeaturePrint(_)) => ("visionFeaturePrint", 2002),
        Some(T::SoundAnalysisPreprocessing(_)) => ("soundAnalysisPreprocessing", 2003),
        Some(T::Gazetteer(_)) => ("gazetteer", 2004),
        Some(T::WordEmbedding(_)) => ("wordEmbedding", 2005),
        Some(T::AudioFeaturePrint(_)) => ("audioFeaturePrint", 2006),
        Some(T::SerializedModel(_)) => ("serializedModel", 3000),
    };
    Err(ModelError::NotMlProgram { name, tag })
}

/// One row of the version table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// `Model.specificationVersion`.
    pub spec: i32,
    /// `Function.opset`.
    pub opset: &'static str,
    /// Deployment target, e.g. `iOS18`.
    pub ios: &'static str,
    /// The matching macOS version.
    pub macos: &'static str,
}

/// Spec versions that can hold an ML Program, oldest first.
pub const TARGETS: &[Target] = &[
    Target {
        spec: 6,
        opset: "CoreML5",
        ios: "iOS15",
        macos: "macOS12",
    },
    Target {
        spec: 7,
        opset: "CoreML6",
        ios: "iOS16",
        macos: "macOS13",
    },
    Target {
        spec: 8,
        opset: "CoreML7",
        ios: "iOS17",
        macos: "macOS14",
    },
    Target {
        spec: 9,
        opset: "CoreML8",
        ios: "iOS18",
        macos: "macOS15",
    },
    Target {
        spec: 10,
        opset: "CoreML9",
        ios: "iOS26",
        macos: "macOS26",
    },
];

/// The target whose opset string is `opset`.
pub fn target_for_opset(opset: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.opset == opset)
}

/// The target of a spec version.
pub fn target_for_spec(spec: i32) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.spec == spec)
}
