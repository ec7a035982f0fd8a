//! Tensors on the wire, and the checks a request must pass before anything is allocated for it.
//!
//! Standard tensors travel as the protocol defines them: an OIP datatype, a shape, and
//! little-endian bytes in `raw_input_contents` (or typed `contents`). A boundary tensor encoded
//! by a cleave codec travels as a `UINT8` tensor of shape `[payload bytes]`, with the codec,
//! the original datatype and shape, quantization scales and zero points, and compression as
//! tensor parameters (`cleave.*`). A JPEG-encoded image (`cleave.codec` = `jpeg90`, …) is the
//! same: the payload is the JPEG file (N > 1 images: length-prefixed files, see
//! `cleave_codec::jpeg`), with one scale and zero point per (image, channel) under
//! `cleave.quant_axis` = 1. Request parameters carry the cut (`cleave.cut`) and the model's
//! hash; response parameters carry the server's queue and compute times.
//!
//! Every count, rank, dimension and byte length is checked with overflow-checked arithmetic
//! against [`Limits`] before use; a bad request is a [`WireError`] with the gRPC code to return
//! (`INVALID_ARGUMENT` for malformed tensors), never a panic or an oversized allocation.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use cleave_codec::{Codec, EncodeOptions, Encoded, Quant};
use cleave_graph::DType;
use tonic::Code;

use crate::inference::model_infer_request::InferInputTensor;
use crate::inference::model_infer_response::InferOutputTensor;
use crate::inference::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse, infer_parameter};

/// Request parameter: the cut whose tail the server runs (absent: the whole model).
pub const PARAM_CUT: &str = "cleave.cut";
/// Request parameter: the model's input shapes the device analysed it at, `x=1,3,48,192;y=…`
/// (required with `cleave.cut`: cut indices depend on them).
pub const PARAM_INPUT_SHAPES: &str = "cleave.input_shapes";
/// Request parameter: a bandwidth probe; the server answers at once without computing.
pub const PARAM_PROBE: &str = "cleave.probe";
/// Request parameter: SHA-256 of the model file the device split, checked by the server.
pub const PARAM_MODEL_SHA256: &str = "cleave.model_sha256";
/// Tensor parameters of a codec-encoded tensor.
pub const PARAM_CODEC: &str = "cleave.codec";
pub const PARAM_DTYPE: &str = "cleave.dtype";
pub const PARAM_SHAPE: &str = "cleave.shape";
pub const PARAM_QUANT_AXIS: &str = "cleave.quant_axis";
pub const PARAM_SCALE: &str = "cleave.scale";
pub const PARAM_ZERO_POINT: &str = "cleave.zero_point";
pub const PARAM_COMPRESSION: &str = "cleave.compression";
/// Response parameters: milliseconds the request waited in the server's queue and computed.
pub const PARAM_QUEUE_MS: &str = "cleave.queue_ms";
pub const PARAM_COMPUTE_MS: &str = "cleave.compute_ms";
/// Response parameter: how many requests ran together in the batch.
pub const PARAM_BATCH: &str = "cleave.batch";
/// Response parameter: the server's compute utilization (busy workers' share, 0..1, smoothed
/// over about a second), on every answer including probes: the load signal devices plan with.
pub const PARAM_SERVER_UTIL: &str = "cleave.server_util";
/// Response parameter: the server's compute workers, next to `cleave.server_util`, so a device
/// can predict the queue wait the load it would add causes.
pub const PARAM_SERVER_WORKERS: &str = "cleave.server_workers";
/// Request parameter: a device's stable id, for a coordinating server (fleet mode).
pub const PARAM_DEVICE: &str = "cleave.device";
/// Request parameter: the device's options (its link estimate and profile folded into expected
/// latency, server time and energy per option), sent only when they changed
/// (`cleave_plan::fleet::DeviceReport`).
pub const PARAM_FLEET_REPORT: &str = "cleave.fleet.report";
/// Response parameter: the coordinating server's recommendation for this device, `CUT:CODEC`.
pub const PARAM_FLEET_PLAN: &str = "cleave.fleet.plan";

/// Bounds a request must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest rank.
    pub max_rank: usize,
    /// Largest element count of one tensor.
    pub max_elements: usize,
    /// Largest number of input tensors.
    pub max_inputs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_rank: 8, max_elements: 1 << 28, max_inputs: 64 }
    }
}

/// A request the server must refuse, with the gRPC code to refuse it with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    pub code: Code,
    pub message: String,
}

impl WireError {
    pub fn invalid(message: impl Into<String>) -> WireError {
        WireError { code: Code::InvalidArgument, message: message.into() }
    }
}

impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> tonic::Status {
        tonic::Status::new(e.code, e.message)
    }
}

/// A decoded tensor: element type, shape, and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Bytes,
}

/// The protocol's name of an element type.
pub fn datatype_name(d: DType) -> &'static str {
    match d {
        DType::Bool => "BOOL",
        DType::U8 => "UINT8",
        DType::U16 => "UINT16",
        DType::U32 => "UINT32",
        DType::U64 => "UINT64",
        DType::I8 => "INT8",
        DType::I16 => "INT16",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::F16 => "FP16",
        DType::Bf16 => "BF16",
        DType::F32 => "FP32",
        DType::F64 => "FP64",
    }
}

/// An element type from the protocol's name (`BYTES` is not a tensor type cleave handles).
pub fn parse_datatype(s: &str) -> Option<DType> {
    Some(match s {
        "BOOL" => DType::Bool,
        "UINT8" => DType::U8,
        "UINT16" => DType::U16,
        "UINT32" => DType::U32,
        "UINT64" => DType::U64,
        "INT8" => DType::I8,
        "INT16" => DType::I16,
        "INT32" => DType::I32,
        "INT64" => DType::I64,
        "FP16" => DType::F16,
        "BF16" => DType::Bf16,
        "FP32" => DType::F32,
        "FP64" => DType::F64,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Parameters

pub fn int_param(v: i64) -> InferParameter {
    InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::Int64Param(v)) }
}
pub fn str_param(v: impl Into<String>) -> InferParameter {
    InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(v.into())) }
}
pub fn f64_param(v: f64) -> InferParameter {
    InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::DoubleParam(v)) }
}

/// Parses `cleave.input_shapes` (`x=1,3,48,192;y=…`), refusing a rank or an element count
/// beyond `limits` before anything is allocated for it.
pub fn parse_input_shapes(s: &str, limits: &Limits) -> Result<cleave_graph::InputShapes, WireError> {
    use cleave_graph::InputShapes;
    let mut out = InputShapes::none();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (name, dims) =
            InputShapes::parse_one(part).map_err(|e| WireError::invalid(format!("{PARAM_INPUT_SHAPES}: {e}")))?;
        if dims.len() > limits.max_rank {
            return Err(WireError::invalid(format!("{PARAM_INPUT_SHAPES}: rank {} is too large", dims.len())));
        }
        let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n.is_none_or(|n| n > limits.max_elements) {
            return Err(WireError::invalid(format!("{PARAM_INPUT_SHAPES}: input `{name}` is too large")));
        }
        out = out.with(name, dims);
    }
    Ok(out)
}

/// An integer parameter (int64 or uint64 in range), if present.
pub fn get_int(params: &HashMap<String, InferParameter>, key: &str) -> Result<Option<i64>, WireError> {
    use infer_parameter::ParameterChoice as P;
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(P::Int64Param(v)) => Ok(Some(*v)),
        Some(P::Uint64Param(v)) => {
            i64::try_from(*v).map(Some).map_err(|_| WireError::invalid(format!("parameter {key} is out of range")))
        }
        Some(P::StringParam(s)) => {
            s.parse().map(Some).map_err(|_| WireError::invalid(format!("parameter {key} is not an integer")))
        }
        Some(_) => Err(WireError::invalid(format!("parameter {key} must be an integer"))),
    }
}

/// A string parameter, if present.
pub fn get_str<'a>(params: &'a HashMap<String, InferParameter>, key: &str) -> Result<Option<&'a str>, WireError> {
    use infer_parameter::ParameterChoice as P;
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(P::StringParam(s)) => Ok(Some(s)),
        Some(_) => Err(WireError::invalid(format!("parameter {key} must be a string"))),
    }
}

/// A number parameter, if present.
pub fn get_f64(params: &HashMap<String, InferParameter>, key: &str) -> Option<f64> {
    use infer_parameter::ParameterChoice as P;
    match params.get(key)?.parameter_choice.as_ref()? {
        P::DoubleParam(v) => Some(*v),
        P::Int64Param(v) => Some(*v as f64),
        P::Uint64Param(v) => Some(*v as f64),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes

/// Checks a wire shape and returns it with its element count.
pub fn check_shape(name: &str, shape: &[i64], limits: &Limits) -> Result<(Vec<usize>, usize), WireError> {
    if shape.len() > limits.max_rank {
        return Err(WireError::invalid(format!(
            "input `{name}` has rank {}, more than the {} allowed",
            shape.len(),
            limits.max_rank
        )));
    }
    let mut dims = Vec::with_capacity(shape.len());
    let mut n: usize = 1;
    for &d in shape {
        if d < 0 {
            return Err(WireError::invalid(format!("input `{name}` has a negative dimension {d}")));
        }
        let d = usize::try_from(d)
            .map_err(|_| WireError::invalid(format!("input `{name}`: dimension {d} is too large")))?;
        n = n.checked_mul(d).filter(|&n| n <= limits.max_elements).ok_or_else(|| {
            WireError::invalid(format!("input `{name}` has more than {} elements", limits.max_elements))
        })?;
        dims.push(d);
    }
    Ok((dims, n))
}

fn parse_dims(name: &str, s: &str, limits: &Limits) -> Result<(Vec<usize>, usize), WireError> {
    let dims: Vec<i64> = if s.is_empty() {
        vec![]
    } else {
        s.split(',').map(|d| d.trim().parse::<i64>()).collect::<Result<_, _>>().map_err(|_| {
            WireError::invalid(format!("input `{name}`: {PARAM_SHAPE} `{s}` is not a list of dimensions"))
        })?
    };
    check_shape(name, &dims, limits)
}

// ---------------------------------------------------------------------------------------------
// Encoding (the sending side)

/// Builds an input tensor for the request, with its raw bytes. An f32 tensor with a codec other
/// than plain fp32 (or with compression) becomes a `UINT8` payload with `cleave.*` parameters;
/// anything else travels as its standard datatype.
pub fn encode_input(
    name: &str,
    dtype: DType,
    shape: &[usize],
    data_le: &[u8],
    opts: EncodeOptions,
) -> Result<(InferInputTensor, Bytes), WireError> {
    encode_input_shared(name, dtype, shape, Bytes::copy_from_slice(data_le), opts)
}

/// [`encode_input`] for data already in a shared buffer: uncoded tensors go on the wire without
/// a copy.
pub fn encode_input_shared(
    name: &str,
    dtype: DType,
    shape: &[usize],
    data_le: Bytes,
    opts: EncodeOptions,
) -> Result<(InferInputTensor, Bytes), WireError> {
    let plain = dtype != DType::F32 || (opts.codec == Codec::Fp32 && !opts.lz4);
    if plain {
        let tensor = InferInputTensor {
            name: name.to_owned(),
            datatype: datatype_name(dtype).to_owned(),
            shape: shape.iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        };
        return Ok((tensor, data_le));
    }
    if !data_le.len().is_multiple_of(4) {
        return Err(WireError::invalid(format!(
            "input `{name}`: {} bytes is not a whole number of f32",
            data_le.len()
        )));
    }
    let copied;
    let values: &[f32] = match bytemuck::try_cast_slice::<u8, f32>(&data_le) {
        Ok(v) if cfg!(target_endian = "little") => v,
        _ => {
            copied =
                data_le.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect::<Vec<f32>>();
            &copied
        }
    };
    let mut enc =
        cleave_codec::encode(values, shape, opts).map_err(|e| WireError::invalid(format!("input `{name}`: {e}")))?;
    let payload = Bytes::from(std::mem::take(&mut enc.payload));
    Ok((encoded_metadata(name, &enc, payload.len()), payload))
}

/// The wire form of an encoded f32 tensor.
pub fn encoded_tensor(name: &str, enc: &Encoded) -> (InferInputTensor, Bytes) {
    (encoded_metadata(name, enc, enc.payload.len()), Bytes::copy_from_slice(&enc.payload))
}

/// The tensor description of an encoded f32 tensor whose payload has `payload_len` bytes.
fn encoded_metadata(name: &str, enc: &Encoded, payload_len: usize) -> InferInputTensor {
    let mut parameters = HashMap::new();
    parameters.insert(PARAM_CODEC.to_owned(), str_param(enc.codec.name()));
    parameters.insert(PARAM_DTYPE.to_owned(), str_param("FP32"));
    parameters.insert(
        PARAM_SHAPE.to_owned(),
        str_param(enc.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")),
    );
    match &enc.quant {
        Some(Quant::PerTensor { scale, zero_point }) => {
            parameters.insert(PARAM_SCALE.to_owned(), str_param(B64.encode(scale.to_le_bytes())));
            parameters.insert(PARAM_ZERO_POINT.to_owned(), str_param(B64.encode([*zero_point])));
        }
        Some(Quant::PerChannel { axis, scales, zero_points }) => {
            parameters.insert(PARAM_QUANT_AXIS.to_owned(), int_param(*axis as i64));
            let s: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            parameters.insert(PARAM_SCALE.to_owned(), str_param(B64.encode(s)));
            parameters.insert(PARAM_ZERO_POINT.to_owned(), str_param(B64.encode(zero_points)));
        }
        None => {}
    }
    if enc.lz4 {
        parameters.insert(PARAM_COMPRESSION.to_owned(), str_param("lz4"));
    }
    InferInputTensor {
        name: name.to_owned(),
        datatype: "UINT8".to_owned(),
        shape: vec![payload_len as i64],
        parameters,
        contents: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding (the receiving side)

/// Validates a request's inputs and decodes them (codec-encoded tensors become f32).
pub fn decode_inputs(req: &ModelInferRequest, limits: &Limits) -> Result<Vec<WireTensor>, WireError> {
    if req.inputs.len() > limits.max_inputs {
        return Err(WireError::invalid(format!(
            "{} inputs, more than the {} allowed",
            req.inputs.len(),
            limits.max_inputs
        )));
    }
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(WireError::invalid(format!(
            "{} inputs but {} raw_input_contents: with raw contents, every input must have one",
            req.inputs.len(),
            req.raw_input_contents.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.iter().enumerate() {
        if !seen.insert(input.name.as_str()) {
            return Err(WireError::invalid(format!("input `{}` is given twice", input.name)));
        }
        if raw && input.contents.is_some() {
            return Err(WireError::invalid(format!("input `{}` has both contents and raw_input_contents", input.name)));
        }
        let data = if raw {
            req.raw_input_contents[i].clone()
        } else {
            match &input.contents {
                Some(c) => typed_contents(&input.name, &input.datatype, c)?,
                None => return Err(WireError::invalid(format!("input `{}` has no data", input.name))),
            }
        };
        out.push(decode_tensor(&input.name, &input.datatype, &input.shape, &input.parameters, data, limits)?);
    }
    Ok(out)
}

/// Validates and decodes one tensor.
pub fn decode_tensor(
    name: &str,
    datatype: &str,
    shape: &[i64],
    params: &HashMap<String, InferParameter>,
    data: Bytes,
    limits: &Limits,
) -> Result<WireTensor, WireError> {
    let dtype = parse_datatype(datatype).ok_or_else(|| {
        WireError::invalid(format!("input `{name}` has datatype `{datatype}`, which cleave does not handle"))
    })?;
    let (dims, n) = check_shape(name, shape, limits)?;
    let bytes =
        n.checked_mul(dtype.size()).ok_or_else(|| WireError::invalid(format!("input `{name}` is too large")))?;
    if data.len() != bytes {
        return Err(WireError::invalid(format!(
            "input `{name}` has {} bytes of data, but {datatype} {dims:?} needs {bytes}",
            data.len()
        )));
    }
    let Some(codec) = get_str(params, PARAM_CODEC)? else {
        return Ok(WireTensor { name: name.to_owned(), dtype, shape: dims, data });
    };
    // A codec-encoded tensor: UINT8 payload plus parameters.
    let codec: Codec =
        codec.parse().map_err(|e: cleave_codec::UnknownCodec| WireError::invalid(format!("input `{name}`: {e}")))?;
    if dtype != DType::U8 || dims.len() != 1 {
        return Err(WireError::invalid(format!("input `{name}`: a {codec} payload must be a 1-D UINT8 tensor")));
    }
    match get_str(params, PARAM_DTYPE)? {
        Some("FP32") => {}
        Some(other) => return Err(WireError::invalid(format!("input `{name}`: codecs decode to FP32, not {other}"))),
        None => return Err(WireError::invalid(format!("input `{name}`: missing parameter {PARAM_DTYPE}"))),
    }
    let shape_s = get_str(params, PARAM_SHAPE)?
        .ok_or_else(|| WireError::invalid(format!("input `{name}`: missing parameter {PARAM_SHAPE}")))?;
    let (orig_shape, orig_n) = parse_dims(name, shape_s, limits)?;
    let lz4 = match get_str(params, PARAM_COMPRESSION)? {
        None | Some("none") => false,
        Some("lz4") => true,
        Some(other) => return Err(WireError::invalid(format!("input `{name}`: unknown compression `{other}`"))),
    };
    let quant = match codec {
        // JPEG's per-(image, channel) parameters travel like int8's per-channel ones.
        Codec::Int8 | Codec::Int4 | Codec::Int2 | Codec::Jpeg(_) => {
            let scales = b64_param(name, params, PARAM_SCALE)?;
            let zps = b64_param(name, params, PARAM_ZERO_POINT)?;
            if scales.len() % 4 != 0 {
                return Err(WireError::invalid(format!("input `{name}`: {PARAM_SCALE} is not a list of f32")));
            }
            let scales: Vec<f32> =
                scales.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            match get_int(params, PARAM_QUANT_AXIS)? {
                None => {
                    if scales.len() != 1 || zps.len() != 1 {
                        return Err(WireError::invalid(format!(
                            "input `{name}`: per-tensor quantization needs one scale and one zero point"
                        )));
                    }
                    Some(Quant::PerTensor { scale: scales[0], zero_point: zps[0] })
                }
                Some(axis) => {
                    let axis = usize::try_from(axis)
                        .map_err(|_| WireError::invalid(format!("input `{name}`: bad axis {axis}")))?;
                    Some(Quant::PerChannel { axis, scales, zero_points: zps })
                }
            }
        }
        _ => None,
    };
    let enc = Encoded { codec, shape: orig_shape.clone(), quant, lz4, payload: data.to_vec() };
    let values = cleave_codec::decode(&enc).map_err(|e| WireError::invalid(format!("input `{name}`: {e}")))?;
    debug_assert_eq!(values.len(), orig_n);
    Ok(WireTensor { name: name.to_owned(), dtype: DType::F32, shape: orig_shape, data: f32_le_bytes(values) })
}

/// Little-endian bytes of f32 values; on little-endian machines the vector itself, not a copy.
fn f32_le_bytes(values: Vec<f32>) -> Bytes {
    if cfg!(target_endian = "little") {
        struct Le(Vec<f32>);
        impl AsRef<[u8]> for Le {
            fn as_ref(&self) -> &[u8] {
                bytemuck::cast_slice(&self.0)
            }
        }
        Bytes::from_owner(Le(values))
    } else {
        Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
    }
}

fn b64_param(name: &str, params: &HashMap<String, InferParameter>, key: &str) -> Result<Vec<u8>, WireError> {
    let s =
        get_str(params, key)?.ok_or_else(|| WireError::invalid(format!("input `{name}`: missing parameter {key}")))?;
    if s.len() > 1 << 20 {
        return Err(WireError::invalid(format!("input `{name}`: parameter {key} is too long")));
    }
    B64.decode(s).map_err(|_| WireError::invalid(format!("input `{name}`: parameter {key} is not base64")))
}

/// Little-endian bytes of typed contents, checked against the datatype.
fn typed_contents(name: &str, datatype: &str, c: &InferTensorContents) -> Result<Bytes, WireError> {
    let le = |v: Vec<u8>| Ok(Bytes::from(v));
    let mismatch = || WireError::invalid(format!("input `{name}`: its contents do not match datatype {datatype}"));
    match datatype {
        "FP32" if !c.fp32_contents.is_empty() || c == &InferTensorContents::default() => {
            le(c.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
        "FP64" => le(c.fp64_contents.iter().flat_map(|v| v.to_le_bytes()).collect()),
        "INT64" => le(c.int64_contents.iter().flat_map(|v| v.to_le_bytes()).collect()),
        "INT32" => le(c.int_contents.iter().flat_map(|v| v.to_le_bytes()).collect()),
        "INT16" => le(c
            .int_contents
            .iter()
            .map(|&v| i16::try_from(v).map_err(|_| mismatch()))
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()),
        "INT8" => le(c
            .int_contents
            .iter()
            .map(|&v| i8::try_from(v).map(|v| v as u8).map_err(|_| mismatch()))
            .collect::<Result<Vec<_>, _>>()?),
        "UINT64" => le(c.uint64_contents.iter().flat_map(|v| v.to_le_bytes()).collect()),
        "UINT32" => le(c.uint_contents.iter().flat_map(|v| v.to_le_bytes()).collect()),
        "UINT16" => le(c
            .uint_contents
            .iter()
            .map(|&v| u16::try_from(v).map_err(|_| mismatch()))
            .collect::<Result<Vec<_>, _>>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()),
        "UINT8" => le(c
            .uint_contents
            .iter()
            .map(|&v| u8::try_from(v).map_err(|_| mismatch()))
            .collect::<Result<Vec<_>, _>>()?),
        "BOOL" => le(c.bool_contents.iter().map(|&b| b as u8).collect()),
        _ => Err(mismatch()),
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// An output tensor for the response, with its raw bytes.
pub fn encode_output(t: &WireTensor) -> (InferOutputTensor, Bytes) {
    (
        InferOutputTensor {
            name: t.name.clone(),
            datatype: datatype_name(t.dtype).to_owned(),
            shape: t.shape.iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        },
        t.data.clone(),
    )
}

/// Validates a response's outputs and returns them.
pub fn decode_outputs(resp: &ModelInferResponse, limits: &Limits) -> Result<Vec<WireTensor>, WireError> {
    if !resp.raw_output_contents.is_empty() && resp.raw_output_contents.len() != resp.outputs.len() {
        return Err(WireError::invalid(format!(
            "{} outputs but {} raw_output_contents",
            resp.outputs.len(),
            resp.raw_output_contents.len()
        )));
    }
    resp.outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let data = match resp.raw_output_contents.get(i) {
                Some(d) => d.clone(),
                None => match &o.contents {
                    Some(c) => typed_contents(&o.name, &o.datatype, c)?,
                    None => return Err(WireError::invalid(format!("output `{}` has no data", o.name))),
                },
            };
            decode_tensor(&o.name, &o.datatype, &o.shape, &o.parameters, data, limits)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn request(inputs: Vec<(InferInputTensor, Bytes)>) -> ModelInferRequest {
        let (inputs, raw): (Vec<_>, Vec<_>) = inputs.into_iter().unzip();
        ModelInferRequest { model_name: "m".into(), inputs, raw_input_contents: raw, ..Default::default() }
    }

    #[test]
    fn codec_round_trip_through_the_wire() {
        let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.37 - 3.0).collect();
        for codec in Codec::ALL {
            for (per_channel, lz4) in [(false, false), (true, false), (false, true), (true, true)] {
                let t = encode_input(
                    "x",
                    DType::F32,
                    &[1, 3, 8],
                    &f32_bytes(&values),
                    EncodeOptions { codec, per_channel, lz4 },
                )
                .unwrap();
                let got = decode_inputs(&request(vec![t]), &Limits::default()).unwrap();
                assert_eq!(got[0].dtype, DType::F32);
                assert_eq!(got[0].shape, vec![1, 3, 8]);
                let dec: Vec<f32> =
                    got[0].data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                let worst = values.iter().zip(&dec).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst <= 0.5 * 48.0 / 3.0 + 1e-3, "{codec} pc={per_channel} lz4={lz4}: {worst}");
                if codec == Codec::Fp32 {
                    assert_eq!(dec, values);
                }
            }
        }
    }

    #[test]
    fn malformed_tensors_are_invalid_argument() {
        let good = || {
            encode_input("x", DType::F32, &[2, 2], &f32_bytes(&[1.0, 2.0, 3.0, 4.0]), EncodeOptions::new(Codec::Fp32))
                .unwrap()
        };
        let cases: Vec<(&str, ModelInferRequest)> = vec![
            ("wrong length", {
                let (t, _) = good();
                request(vec![(t, Bytes::from_static(&[0; 15]))])
            }),
            ("negative dim", {
                let (mut t, b) = good();
                t.shape = vec![-2, -2];
                request(vec![(t, b)])
            }),
            ("huge dims", {
                let (mut t, b) = good();
                t.shape = vec![1 << 40, 1 << 40];
                request(vec![(t, b)])
            }),
            ("rank 64", {
                let (mut t, b) = good();
                t.shape = vec![1; 64];
                request(vec![(t, b)])
            }),
            ("bad datatype", {
                let (mut t, b) = good();
                t.datatype = "BYTES".into();
                request(vec![(t, b)])
            }),
            ("missing raw", {
                let (t, _) = good();
                ModelInferRequest {
                    inputs: vec![t.clone(), t],
                    raw_input_contents: vec![Bytes::new()],
                    ..Default::default()
                }
            }),
            ("unknown codec", {
                let (mut t, b) =
                    encode_input("x", DType::F32, &[4], &f32_bytes(&[1.0; 4]), EncodeOptions::new(Codec::Int8))
                        .unwrap();
                t.parameters.insert(PARAM_CODEC.into(), str_param("int3"));
                request(vec![(t, b)])
            }),
            ("missing scale", {
                let (mut t, b) =
                    encode_input("x", DType::F32, &[4], &f32_bytes(&[1.0; 4]), EncodeOptions::new(Codec::Int8))
                        .unwrap();
                t.parameters.remove(PARAM_SCALE);
                request(vec![(t, b)])
            }),
            ("truncated int4", {
                let (t, b) =
                    encode_input("x", DType::F32, &[9], &f32_bytes(&[1.0; 9]), EncodeOptions::new(Codec::Int4))
                        .unwrap();
                let mut t = t;
                t.shape = vec![4];
                request(vec![(t, b.slice(0..4))])
            }),
        ];
        for (what, req) in cases {
            let err = decode_inputs(&req, &Limits::default()).unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument, "{what}: {err}");
        }
    }

    /// A smooth 1×3×16×16 image, normalised like ImageNet inputs.
    fn image_values() -> Vec<f32> {
        (0..3 * 16 * 16)
            .map(|i| {
                let (c, y, x) = (i / 256, (i / 16) % 16, i % 16);
                ((x * 8 + y * 4 + c * 40) % 256) as f32 / 255.0 * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn jpeg_round_trip_through_the_wire() {
        let values = image_values();
        let codec = Codec::jpeg(95).unwrap();
        let (t, b) =
            encode_input("image", DType::F32, &[1, 3, 16, 16], &f32_bytes(&values), EncodeOptions::new(codec)).unwrap();
        assert_eq!(get_str(&t.parameters, PARAM_CODEC).unwrap(), Some("jpeg95"));
        assert_eq!(&b[..2], &[0xFF, 0xD8], "a single image travels as a bare JPEG file");
        let got = decode_inputs(&request(vec![(t, b)]), &Limits::default()).unwrap();
        assert_eq!(got[0].shape, vec![1, 3, 16, 16]);
        let dec: Vec<f32> = got[0].data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let rms = (values.iter().zip(&dec).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / values.len() as f32).sqrt();
        assert!(rms < 0.1, "rms error {rms} on a range of 4");
        // A tensor JPEG does not apply to is refused when encoding.
        let e = encode_input("x", DType::F32, &[1, 2, 4, 4], &f32_bytes(&[0.0; 32]), EncodeOptions::new(codec))
            .unwrap_err();
        assert!(e.message.contains("does not apply"), "{e}");
    }

    #[test]
    fn malformed_jpeg_is_invalid_argument() {
        let values = image_values();
        let codec = Codec::JPEG[0];
        let good = || {
            encode_input("image", DType::F32, &[1, 3, 16, 16], &f32_bytes(&values), EncodeOptions::new(codec)).unwrap()
        };
        let with_shape = |shape: &str| {
            let (mut t, b) = good();
            t.parameters.insert(PARAM_SHAPE.into(), str_param(shape));
            request(vec![(t, b)])
        };
        let cases: Vec<(&str, ModelInferRequest)> = vec![
            ("truncated", {
                let (mut t, b) = good();
                let short = b.slice(0..b.len() / 2);
                t.shape = vec![short.len() as i64];
                request(vec![(t, short)])
            }),
            ("garbage", {
                let (mut t, _) = good();
                t.shape = vec![64];
                request(vec![(t, Bytes::from(vec![0x5a; 64]))])
            }),
            ("size does not match the shape", with_shape("1,3,16,32")),
            ("grayscale shape for an RGB image", with_shape("1,1,16,16")),
            ("not an image shape", with_shape("1,768")),
            ("two images claimed, one sent", with_shape("2,3,16,16")),
            ("missing scales", {
                let (mut t, b) = good();
                t.parameters.remove(PARAM_SCALE);
                request(vec![(t, b)])
            }),
            ("per-tensor parameters", {
                let (mut t, b) = good();
                t.parameters.remove(PARAM_QUANT_AXIS);
                request(vec![(t, b)])
            }),
            ("lz4 claimed", {
                let (mut t, b) = good();
                t.parameters.insert(PARAM_COMPRESSION.into(), str_param("lz4"));
                request(vec![(t, b)])
            }),
        ];
        for (what, req) in cases {
            let err = decode_inputs(&req, &Limits::default()).unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument, "{what}: {err}");
        }
        assert!(decode_inputs(&request(vec![good()]), &Limits::default()).is_ok());
    }
}
