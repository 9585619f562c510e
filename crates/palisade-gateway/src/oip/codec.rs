//! The Open Inference Protocol (KServe v2) REST wire format: infer requests as JSON tensors or
//! with the binary tensor extension, and infer responses in either form.
//!
//! Pure functions over bytes: nothing here allocates more than the input's size allows, and
//! nothing panics on any input (see `fuzz/fuzz_targets/oip_request.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// Why a request body is not a well-formed infer request.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The JSON is broken or not an infer request.
    #[error("invalid JSON infer request: {0}")]
    Json(String),
    /// The binary header length does not fit the body.
    #[error("Inference-Header-Content-Length is {header} but the body has only {body} bytes")]
    HeaderLength {
        /// Declared JSON header length.
        header: usize,
        /// Body length.
        body: usize,
    },
    /// A `binary_data_size` claims more bytes than remain.
    #[error(
        "input '{name}' declares binary_data_size {declared} but only {available} bytes remain"
    )]
    BinaryOverrun {
        /// Input name.
        name: String,
        /// Declared size.
        declared: u64,
        /// Bytes left in the body.
        available: usize,
    },
    /// Bytes left over after every binary input was read.
    #[error("{0} bytes of binary data follow the inputs but no input declares them")]
    TrailingBytes(usize),
    /// Binary data on a request without the binary extension header.
    #[error(
        "input '{0}' declares binary_data_size but the request has no Inference-Header-Content-Length"
    )]
    NoHeaderLength(String),
    /// A datatype this server does not accept.
    #[error("input '{name}' has datatype {datatype}; this server accepts FP32 inputs")]
    Datatype {
        /// Input name.
        name: String,
        /// What was sent.
        datatype: String,
    },
    /// Shape and data do not agree, or the shape is nonsense.
    #[error("input '{name}': {detail}")]
    Shape {
        /// Input name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A tensor's parameter of an extension this server does not implement.
    #[error("{tensor} '{name}': the '{parameter}' parameter is not supported")]
    Unsupported {
        /// `input` or `output`.
        tensor: &'static str,
        /// The tensor's name.
        name: String,
        /// The parameter.
        parameter: &'static str,
    },
    /// A JSON value that is not a number.
    #[error("input '{name}': element {index} is not a number")]
    NotANumber {
        /// Input name.
        name: String,
        /// Flat element index.
        index: usize,
    },
}

/// One input tensor, decoded to `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    /// Its name.
    pub name: String,
    /// Its shape, batch first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// An output the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// Whether it should come back as binary data, when the output says (its `binary_data`
    /// parameter); otherwise the request's `binary_data_output` decides.
    pub binary: Option<bool>,
}

/// A decoded infer request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The client's request id, echoed back.
    pub id: Option<String>,
    /// The inputs, in request order.
    pub inputs: Vec<InputTensor>,
    /// The outputs asked for (empty: all).
    pub outputs: Vec<RequestedOutput>,
    /// `parameters.binary_data_output`: whether outputs come back as binary data, unless an
    /// output's own `binary_data` says otherwise (Triton's binary data extension).
    pub binary_data_output: bool,
    /// `parameters.timeout`, in microseconds as Triton and tritonclient give it: how long the
    /// client will wait for the model (0 or absent: the model's policy alone decides).
    pub timeout: Option<std::time::Duration>,
}

#[derive(Deserialize)]
struct WireRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<RequestParams>,
    inputs: Vec<WireInput>,
    #[serde(default)]
    outputs: Option<Vec<WireOutput>>,
}

#[derive(Deserialize)]
struct WireInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<InputParams>,
    #[serde(default)]
    data: Option<FlatData>,
}

/// A `parameters` map (of the request, an input or an output) as far as this server acts on it:
/// a JSON object whose entries the server reads are typed (a `null` one is absent) and whose
/// others are skipped as they are parsed, not kept. Kept as `Value` trees, an entry holding a
/// long array took about 15 times its size in memory, as `data` did before [`FlatData`]
/// (review, 2026-12-06). Each level reads only its own keys, so that a client's own parameter
/// of the same name elsewhere is left alone, and only an object is a map (serde's derived
/// structs would take an array's items as the fields in order).
macro_rules! parameters {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Default)]
        struct $name {
            $($(#[$fdoc])* $field: Option<$ty>,)+
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Entries;
                impl<'de> serde::de::Visitor<'de> for Entries {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a parameters object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$name, A::Error> {
                        let mut out = $name::default();
                        let mut seen = Vec::new();
                        while let Some(key) = map.next_key::<String>()? {
                            match key.as_str() {
                                $(stringify!($field) => {
                                    if seen.contains(&stringify!($field)) {
                                        return Err(serde::de::Error::duplicate_field(
                                            stringify!($field),
                                        ));
                                    }
                                    seen.push(stringify!($field));
                                    out.$field = map.next_value::<Option<$ty>>()?;
                                })+
                                _ => {
                                    map.next_value::<serde::de::IgnoredAny>()?;
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(Entries)
            }
        }
    };
}

parameters! {
    /// The request's `parameters`.
    RequestParams {
        /// Whether outputs come back as binary data.
        binary_data_output: bool,
        /// Microseconds the client will wait (Triton's request timeout).
        timeout: u64,
    }
}

parameters! {
    /// An input's `parameters`.
    InputParams {
        /// The input's size in the binary section.
        binary_data_size: serde_json::Number,
        /// The shared-memory extension, which this server does not implement.
        shared_memory_region: serde::de::IgnoredAny,
    }
}

parameters! {
    /// An output's `parameters`.
    OutputParams {
        /// Whether the output comes back as binary data.
        binary_data: bool,
        /// The classification extension, which this server does not implement.
        classification: serde::de::IgnoredAny,
        /// The shared-memory extension, which this server does not implement.
        shared_memory_region: serde::de::IgnoredAny,
    }
}

/// Most dimensions a REST input's shape may have, as over gRPC.
pub const MAX_RANK: usize = crate::grpc::MAX_RANK;

/// An input's `data`, flattened row-major into `f32` as it is parsed: a `Value` tree cost about
/// 40 bytes of memory per 2-byte number on the wire (`0,`), 71 MiB for a 4 MiB body (review,
/// 2026-12-06); this holds 4 bytes per number (8 while the vector grows). The nesting depth is
/// bounded by serde_json's recursion limit.
#[derive(Debug, Default)]
struct FlatData {
    values: Vec<f32>,
    /// The flat index of the first element that is not a number, if any (the rest are skipped).
    not_a_number: Option<usize>,
}

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut flat = FlatData::default();
        serde::de::DeserializeSeed::deserialize(Flatten(&mut flat), d)?;
        Ok(flat)
    }
}

/// Adds one JSON value (a number or a nested array of them) to a [`FlatData`].
struct Flatten<'a>(&'a mut FlatData);

impl Flatten<'_> {
    fn number(self, x: f64) {
        if self.0.not_a_number.is_none() {
            self.0.values.push(x as f32);
        }
    }

    fn other(self) {
        if self.0.not_a_number.is_none() {
            self.0.not_a_number = Some(self.0.values.len());
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number or an array of numbers")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_f64<E>(self, x: f64) -> Result<(), E> {
        self.number(x);
        Ok(())
    }

    fn visit_i64<E>(self, x: i64) -> Result<(), E> {
        self.number(x as f64);
        Ok(())
    }

    fn visit_u64<E>(self, x: u64) -> Result<(), E> {
        self.number(x as f64);
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::IgnoredAny;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.other();
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.other();
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.other();
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.other();
        Ok(())
    }
}

#[derive(Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Option<OutputParams>,
}

/// The datatypes of the protocol (anything else is a protocol error), each with its name in
/// Triton's model configuration (model_config.proto's `DataType`; `BYTES` is `TYPE_STRING`).
const DATATYPES: &[(&str, &str)] = &[
    ("BOOL", "TYPE_BOOL"),
    ("UINT8", "TYPE_UINT8"),
    ("UINT16", "TYPE_UINT16"),
    ("UINT32", "TYPE_UINT32"),
    ("UINT64", "TYPE_UINT64"),
    ("INT8", "TYPE_INT8"),
    ("INT16", "TYPE_INT16"),
    ("INT32", "TYPE_INT32"),
    ("INT64", "TYPE_INT64"),
    ("FP16", "TYPE_FP16"),
    ("FP32", "TYPE_FP32"),
    ("FP64", "TYPE_FP64"),
    ("BYTES", "TYPE_STRING"),
    ("BF16", "TYPE_BF16"),
];

/// Triton's model-configuration name of the protocol datatype `datatype`, `None` if it is not
/// one.
pub fn triton_datatype(datatype: &str) -> Option<&'static str> {
    DATATYPES
        .iter()
        .find(|(d, _)| *d == datatype)
        .map(|&(_, t)| t)
}

/// Decodes an infer request body. `header_len` is the `Inference-Header-Content-Length` value,
/// when the binary extension is used.
pub fn decode_request(body: &[u8], header_len: Option<usize>) -> Result<InferRequest, CodecError> {
    let (json, mut binary) = match header_len {
        Some(h) if h > body.len() => {
            return Err(CodecError::HeaderLength {
                header: h,
                body: body.len(),
            });
        }
        Some(h) => body.split_at(h),
        None => (body, &[][..]),
    };
    let wire: WireRequest =
        serde_json::from_slice(json).map_err(|e| CodecError::Json(e.to_string()))?;
    let mut inputs = Vec::with_capacity(wire.inputs.len().min(16));
    for inp in wire.inputs {
        let name = inp.name;
        if triton_datatype(&inp.datatype).is_none() {
            return Err(CodecError::Datatype {
                name,
                datatype: inp.datatype,
            });
        }
        if inp.shape.len() > MAX_RANK {
            return Err(CodecError::Shape {
                name,
                detail: format!(
                    "a shape has at most {MAX_RANK} dimensions, not {}",
                    inp.shape.len()
                ),
            });
        }
        let mut shape = Vec::with_capacity(inp.shape.len());
        let mut count: usize = 1;
        for &d in &inp.shape {
            let d = usize::try_from(d).map_err(|_| CodecError::Shape {
                name: name.clone(),
                detail: format!("negative dimension {d} in shape {:?}", inp.shape),
            })?;
            count = count.checked_mul(d).ok_or_else(|| CodecError::Shape {
                name: name.clone(),
                detail: format!("shape {:?} is too large", inp.shape),
            })?;
            shape.push(d);
        }
        if inp
            .parameters
            .as_ref()
            .is_some_and(|p| p.shared_memory_region.is_some())
        {
            return Err(CodecError::Unsupported {
                tensor: "input",
                name,
                parameter: "shared_memory_region",
            });
        }
        let binary_size = inp
            .parameters
            .as_ref()
            .and_then(|p| p.binary_data_size.as_ref());
        let data = match binary_size {
            Some(v) => {
                let declared = v.as_u64().ok_or_else(|| {
                    CodecError::Json(format!(
                        "input '{name}': binary_data_size must be a non-negative integer"
                    ))
                })?;
                if header_len.is_none() {
                    return Err(CodecError::NoHeaderLength(name));
                }
                let available = binary.len();
                let n = usize::try_from(declared)
                    .ok()
                    .filter(|&n| n <= available)
                    .ok_or_else(|| CodecError::BinaryOverrun {
                        name: name.clone(),
                        declared,
                        available,
                    })?;
                let (mine, rest) = binary.split_at(n);
                binary = rest;
                if inp.datatype != "FP32" {
                    return Err(CodecError::Datatype {
                        name,
                        datatype: inp.datatype,
                    });
                }
                if Some(n) != count.checked_mul(4) {
                    return Err(CodecError::Shape {
                        name,
                        detail: format!(
                            "shape {shape:?} needs {count} FP32 values ({} bytes) but binary_data_size is {n}",
                            count.saturating_mul(4)
                        ),
                    });
                }
                mine.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
            None => {
                if inp.datatype != "FP32" {
                    return Err(CodecError::Datatype {
                        name,
                        datatype: inp.datatype,
                    });
                }
                let Some(data) = inp.data else {
                    return Err(CodecError::Json(format!(
                        "input '{name}' has neither data nor binary_data_size"
                    )));
                };
                if let Some(index) = data.not_a_number {
                    return Err(CodecError::NotANumber { name, index });
                }
                let flat = data.values;
                if flat.len() != count {
                    return Err(CodecError::Shape {
                        name,
                        detail: format!(
                            "shape {shape:?} needs {count} values but data has {}",
                            flat.len()
                        ),
                    });
                }
                flat
            }
        };
        inputs.push(InputTensor { name, shape, data });
    }
    if !binary.is_empty() {
        return Err(CodecError::TrailingBytes(binary.len()));
    }
    let mut outputs = Vec::new();
    for o in wire.outputs.unwrap_or_default() {
        let params = o.parameters.unwrap_or_default();
        // tritonclient's `class_count` asks for the classification extension's "score:index"
        // strings; answering the FP32 scores instead would not be what was asked for. An output
        // asked into a shared-memory region would be answered in the body instead, and the
        // client would read what the region held before.
        let asked = [
            ("classification", params.classification.is_some()),
            (
                "shared_memory_region",
                params.shared_memory_region.is_some(),
            ),
        ];
        if let Some(&(parameter, _)) = asked.iter().find(|(_, given)| *given) {
            return Err(CodecError::Unsupported {
                tensor: "output",
                name: o.name,
                parameter,
            });
        }
        outputs.push(RequestedOutput {
            binary: params.binary_data,
            name: o.name,
        });
    }
    let params = wire.parameters.unwrap_or_default();
    Ok(InferRequest {
        id: wire.id,
        inputs,
        outputs,
        binary_data_output: params.binary_data_output.unwrap_or(false),
        timeout: params
            .timeout
            .filter(|&us| us != 0)
            .map(std::time::Duration::from_micros),
    })
}

/// Values of an output tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    /// `FP32`
    F32(Vec<f32>),
    /// `INT64`
    I64(Vec<i64>),
}

impl OutputData {
    fn datatype(&self) -> &'static str {
        match self {
            OutputData::F32(_) => "FP32",
            OutputData::I64(_) => "INT64",
        }
    }

    fn le_bytes(&self) -> Vec<u8> {
        match self {
            OutputData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutputData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// One output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values.
    pub data: OutputData,
}

#[derive(Serialize)]
struct WireResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<WireOutTensor<'a>>,
}

#[derive(Serialize)]
struct WireOutTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a OutputData>,
}

impl Serialize for OutputData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OutputData::F32(v) => v.serialize(s),
            OutputData::I64(v) => v.serialize(s),
        }
    }
}

/// An encoded infer response.
#[derive(Debug, Clone)]
pub struct EncodedResponse {
    /// The body.
    pub body: Vec<u8>,
    /// Length of the JSON header when binary outputs follow it.
    pub header_len: Option<usize>,
}

/// Encodes an infer response with the outputs in `tensors` that the request asked for (all when
/// it named none), each as JSON or binary data as asked.
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    request: &InferRequest,
    tensors: &[OutputTensor],
) -> Result<EncodedResponse, serde_json::Error> {
    let mut binary = Vec::new();
    let mut outs = Vec::with_capacity(tensors.len());
    for t in tensors {
        let as_binary = if request.outputs.is_empty() {
            request.binary_data_output
        } else {
            match request.outputs.iter().find(|o| o.name == t.name) {
                Some(o) => o.binary.unwrap_or(request.binary_data_output),
                None => continue,
            }
        };
        if as_binary {
            let bytes = t.data.le_bytes();
            outs.push(WireOutTensor {
                name: &t.name,
                datatype: t.data.datatype(),
                shape: &t.shape,
                parameters: Some(serde_json::json!({ "binary_data_size": bytes.len() })),
                data: None,
            });
            binary.extend_from_slice(&bytes);
        } else {
            outs.push(WireOutTensor {
                name: &t.name,
                datatype: t.data.datatype(),
                shape: &t.shape,
                parameters: None,
                data: Some(&t.data),
            });
        }
    }
    let mut body = serde_json::to_vec(&WireResponse {
        model_name,
        model_version,
        id: request.id.as_deref(),
        outputs: outs,
    })?;
    let header_len = (!binary.is_empty()).then_some(body.len());
    body.extend_from_slice(&binary);
    Ok(EncodedResponse { body, header_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_request(values: &[f32], declared: usize, shape: &str) -> (Vec<u8>, usize) {
        let header = format!(
            r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"FP32","parameters":{{"binary_data_size":{declared}}}}}],"outputs":[{{"name":"y","parameters":{{"binary_data":true}}}}]}}"#
        );
        let mut body = header.clone().into_bytes();
        for v in values {
            body.extend_from_slice(&v.to_le_bytes());
        }
        (body, header.len())
    }

    #[test]
    fn json_nested_and_flat() {
        let r = decode_request(
            br#"{"id":"7","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(r.id.as_deref(), Some("7"));
        assert_eq!(r.inputs[0].data, vec![1.0, 2.0, 3.0, 4.5]);
        let r = decode_request(
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}],"parameters":{"binary_data_output":true}}"#,
            None,
        )
        .unwrap();
        assert!(r.binary_data_output);
        assert_eq!(r.timeout, None);
    }

    #[test]
    fn the_requests_timeout_is_in_microseconds_and_zero_is_none() {
        let with = |t: &str| {
            decode_request(
                format!(r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":[1]}}],"parameters":{{"timeout":{t}}}}}"#)
                    .as_bytes(),
                None,
            )
        };
        assert_eq!(
            with("250000").unwrap().timeout,
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(with("0").unwrap().timeout, None);
        assert!(with("-1").is_err());
        assert!(with("\"soon\"").is_err());
    }

    #[test]
    fn binary_round_trip() {
        let (body, h) = binary_request(&[1.0, -2.0, 0.5], 12, "[1,3]");
        let r = decode_request(&body, Some(h)).unwrap();
        assert_eq!(r.inputs[0].data, vec![1.0, -2.0, 0.5]);
        assert_eq!(
            r.outputs,
            vec![RequestedOutput {
                name: "y".into(),
                binary: Some(true)
            }]
        );
        let enc = encode_response(
            "m",
            "1",
            &r,
            &[OutputTensor {
                name: "y".into(),
                shape: vec![1, 2],
                data: OutputData::F32(vec![0.25, 4.0]),
            }],
        )
        .unwrap();
        let hl = enc.header_len.unwrap();
        let v: Value = serde_json::from_slice(&enc.body[..hl]).unwrap();
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(&enc.body[hl..hl + 4], &0.25f32.to_le_bytes());
    }

    #[test]
    fn lies_and_breakage_are_errors() {
        // Declares more bytes than sent.
        let (body, h) = binary_request(&[1.0, 2.0], 12, "[1,3]");
        assert!(matches!(
            decode_request(&body, Some(h)),
            Err(CodecError::BinaryOverrun { .. })
        ));
        // Declares fewer bytes than sent.
        let (body, h) = binary_request(&[1.0, 2.0, 3.0], 8, "[1,3]");
        assert!(matches!(
            decode_request(&body, Some(h)),
            Err(CodecError::Shape { .. })
        ));
        // Header length beyond the body.
        assert!(matches!(
            decode_request(&body, Some(body.len() + 1)),
            Err(CodecError::HeaderLength { .. })
        ));
        // Binary size without the header.
        assert!(matches!(
            decode_request(&body[..h], None),
            Err(CodecError::Json(_)) | Err(CodecError::NoHeaderLength(_))
        ));
        // Trailing bytes.
        let (mut body, h) = binary_request(&[1.0, 2.0, 3.0], 12, "[1,3]");
        body.push(0);
        assert_eq!(
            decode_request(&body, Some(h)),
            Err(CodecError::TrailingBytes(1))
        );
        // Broken JSON, wrong dtype, mismatched shape, strings, negative and huge shapes.
        assert!(matches!(
            decode_request(b"{\"inputs\":[", None),
            Err(CodecError::Json(_))
        ));
        let dt = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT64","data":[1]}]}"#;
        assert!(matches!(
            decode_request(dt, None),
            Err(CodecError::Datatype { .. })
        ));
        let dt = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#;
        assert!(matches!(
            decode_request(dt, None),
            Err(CodecError::Datatype { .. })
        ));
        let sh = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#;
        assert!(matches!(
            decode_request(sh, None),
            Err(CodecError::Shape { .. })
        ));
        let s = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#;
        assert!(matches!(
            decode_request(s, None),
            Err(CodecError::NotANumber { .. })
        ));
        let neg = br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#;
        assert!(matches!(
            decode_request(neg, None),
            Err(CodecError::Shape { .. })
        ));
        let huge = br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[1]}]}"#;
        assert!(matches!(
            decode_request(huge, None),
            Err(CodecError::Shape { .. })
        ));
        let deep = format!(
            r#"{{"inputs":[{{"name":"x","shape":[{}],"datatype":"FP32","data":[1]}}]}}"#,
            vec!["1"; MAX_RANK + 1].join(",")
        );
        assert!(matches!(
            decode_request(deep.as_bytes(), None),
            Err(CodecError::Shape { detail, .. }) if detail.contains("at most 32 dimensions")
        ));
    }

    #[test]
    fn binary_data_output_is_the_default_of_listed_outputs_too() {
        let y = || OutputTensor {
            name: "y".into(),
            shape: vec![1, 2],
            data: OutputData::F32(vec![0.25, 4.0]),
        };
        let body = |outputs: &str| {
            format!(
                r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":[1]}}],"outputs":[{outputs}],"parameters":{{"binary_data_output":true}}}}"#
            )
        };
        let as_binary = |outputs: &str| {
            let r = decode_request(body(outputs).as_bytes(), None).unwrap();
            encode_response("m", "1", &r, &[y()])
                .unwrap()
                .header_len
                .is_some()
        };
        assert!(as_binary(r#"{"name":"y"}"#));
        assert!(!as_binary(
            r#"{"name":"y","parameters":{"binary_data":false}}"#
        ));
        // tritonclient's class_count asks for an extension this server does not implement.
        let classify = body(r#"{"name":"y","parameters":{"classification":2}}"#);
        let e = decode_request(classify.as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("'classification'"), "{e}");
    }

    /// Each `parameters` object is read for its own level's keys only; a known key of the wrong
    /// type or given twice is refused, a `null` one is absent, and only an object is a map.
    #[test]
    fn parameters_are_objects_read_for_their_own_keys() {
        let decode = |request: &str, input: &str, output: &str| {
            decode_request(
                format!(
                    r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{input}}}],"outputs":[{{"name":"y","parameters":{output}}}],"parameters":{request}}}"#
                )
                .as_bytes(),
                None,
            )
        };
        // Another level's key, or a client's own, is left alone.
        let r = decode(
            r#"{"binary_data":"x","mine":[1,2]}"#,
            r#"{"binary_data_output":1}"#,
            r#"{"binary_data_size":"y","binary_data":null}"#,
        )
        .unwrap();
        assert!(!r.binary_data_output);
        assert_eq!(r.outputs[0].binary, None);
        for (request, input, output, says) in [
            ("[true]", "{}", "{}", "a parameters object"),
            ("{}", "[16]", "{}", "a parameters object"),
            ("{}", "{}", r#"{"binary_data":"yes"}"#, "boolean"),
            (
                "{}",
                r#"{"shared_memory_region":"r"}"#,
                "{}",
                "input 'x': the 'shared_memory_region' parameter is not supported",
            ),
            (
                "{}",
                "{}",
                r#"{"shared_memory_region":"r"}"#,
                "output 'y': the 'shared_memory_region' parameter is not supported",
            ),
            (
                r#"{"binary_data_output":true,"binary_data_output":false}"#,
                "{}",
                "{}",
                "duplicate field",
            ),
        ] {
            let e = decode(request, input, output).unwrap_err().to_string();
            assert!(e.contains(says), "{request} {input} {output}: {e}");
        }
    }

    #[test]
    fn json_data_is_flattened_row_major_and_its_first_non_number_named() {
        let nested = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,-2],[3.5,4e0]]}]}"#;
        assert_eq!(
            decode_request(nested, None).unwrap().inputs[0].data,
            vec![1.0, -2.0, 3.5, 4.0]
        );
        for (data, index) in [
            (r#"[1,[2,"3"],4]"#, 2),
            (r#"[[null],1]"#, 0),
            (r#"[1,{"a":[1]},true]"#, 1),
        ] {
            let body = format!(
                r#"{{"inputs":[{{"name":"x","shape":[3],"datatype":"FP32","data":{data}}}]}}"#
            );
            match decode_request(body.as_bytes(), None) {
                Err(CodecError::NotANumber { index: i, .. }) => assert_eq!(i, index, "{data}"),
                other => panic!("{data}: {other:?}"),
            }
        }
        // Nesting deeper than serde_json's recursion limit is a JSON error, not a stack overflow.
        let deep = format!(
            r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"FP32","data":{}1{}}}]}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(matches!(
            decode_request(deep.as_bytes(), None),
            Err(CodecError::Json(_))
        ));
    }

    /// Every protocol datatype's Triton name is one of the `DataType` values of the proto that
    /// the gRPC `ModelConfig` answers with.
    #[test]
    fn every_datatype_has_its_triton_name_in_the_proto() {
        use crate::grpc::inference::DataType;
        for (d, t) in super::DATATYPES {
            let proto = DataType::from_str_name(t).unwrap_or_else(|| panic!("{d}: {t}"));
            assert_eq!(proto.as_str_name(), *t);
            assert_eq!(super::triton_datatype(d), Some(*t));
        }
        assert_eq!(super::triton_datatype("FP8"), None);
    }
}
