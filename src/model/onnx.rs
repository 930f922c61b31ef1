//! Writing ONNX graphs with prost: the generated messages of
//! `proto/onnx/onnx_subset.proto` and a small builder. The trainer exports
//! its Transformer through this; tests and the reference model use it too.

use prost::Message as _;

/// Generated ONNX messages.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// ONNX IR version written (ONNX 1.12+; what opset 17 needs).
pub const IR_VERSION: i64 = 8;
/// Default-domain opset written.
pub const OPSET: i64 = 17;

/// The same model file without the graph output `name` (ONNX Runtime then
/// skips the nodes only that output needed). For measuring what an
/// optional output costs.
pub fn without_output(onnx: &[u8], name: &str) -> Result<Vec<u8>, prost::DecodeError> {
    let mut model = pb::ModelProto::decode(onnx)?;
    if let Some(g) = model.graph.as_mut() {
        g.output.retain(|o| o.name != name);
    }
    Ok(model.encode_to_vec())
}

/// Element types used by segstream models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// float32
    F32,
    /// int64
    I64,
    /// int32 (only to build wrong models in tests)
    I32,
}

impl Elem {
    fn code(self) -> i32 {
        match self {
            Elem::F32 => pb::tensor_proto::DataType::Float as i32,
            Elem::I64 => pb::tensor_proto::DataType::Int64 as i32,
            Elem::I32 => pb::tensor_proto::DataType::Int32 as i32,
        }
    }
}

/// A dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A named dynamic dimension (the batch).
    Dynamic(&'static str),
    /// A fixed size.
    Fixed(i64),
}

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// One integer.
    Int(&'static str, i64),
    /// Integers.
    Ints(&'static str, Vec<i64>),
    /// One float.
    Float(&'static str, f32),
}

/// Builds one graph, node by node, in topological order.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: pb::GraphProto,
    next: usize,
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::dimension::Value;
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Dynamic(n) => Value::DimParam((*n).to_string()),
                Dim::Fixed(v) => Value::DimValue(*v),
            }),
            denotation: String::new(),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem.code(),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

impl GraphBuilder {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: pb::GraphProto {
                name: name.to_string(),
                ..Default::default()
            },
            next: 0,
        }
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares the six contract inputs for `spec` (batch dimension dynamic,
    /// event dimension fixed at `spec.max_events`), in contract order;
    /// returns their names.
    pub fn contract_inputs(&mut self, spec: &crate::features::FeatureSpec) -> [String; 6] {
        self.contract_inputs_with(spec, Dim::Fixed(spec.max_events as i64))
    }

    /// [`GraphBuilder::contract_inputs`] with the event dimension given:
    /// `Dim::Dynamic` declares a model that takes any number of events up
    /// to `spec.max_events`, which the scorer then gives only as many as
    /// the batch's longest history holds.
    pub fn contract_inputs_with(
        &mut self,
        spec: &crate::features::FeatureSpec,
        events: Dim,
    ) -> [String; 6] {
        let (e, t, f) = (
            crate::features::EVENT_NUMERIC_DIM as i64,
            spec.text_tokens as i64,
            crate::features::CUSTOMER_DIM as i64,
        );
        let b = || Dim::Dynamic("batch");
        let n = || events.clone();
        [
            self.input("event_kind", Elem::I64, &[b(), n()]),
            self.input("event_category", Elem::I64, &[b(), n()]),
            self.input("event_numeric", Elem::F32, &[b(), n(), Dim::Fixed(e)]),
            self.input("event_text", Elem::I64, &[b(), n(), Dim::Fixed(t)]),
            self.input("event_mask", Elem::F32, &[b(), n()]),
            self.input("customer_features", Elem::F32, &[b(), Dim::Fixed(f)]),
        ]
    }

    /// Declares the four contract outputs for `segments` segments.
    pub fn contract_outputs(&mut self, segments: usize) {
        let b = || Dim::Dynamic("batch");
        self.output(
            "segment_probs",
            Elem::F32,
            &[b(), Dim::Fixed(segments as i64)],
        );
        for name in [
            "purchase_probability",
            "churn_probability",
            "predicted_spend",
        ] {
            self.output(name, Elem::F32, &[b()]);
        }
    }

    /// Declares a graph output (an existing value must be named `name`).
    pub fn output(&mut self, name: &str, elem: Elem, dims: &[Dim]) {
        self.graph.output.push(value_info(name, elem, dims));
    }

    /// A float32 constant (weights).
    pub fn init_f32(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(pb::TensorProto {
            dims: dims.to_vec(),
            data_type: Elem::F32.code(),
            name: name.to_string(),
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// An int64 constant (axes, shapes).
    pub fn init_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(pb::TensorProto {
            dims: dims.to_vec(),
            data_type: Elem::I64.code(),
            name: name.to_string(),
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a node; returns the name of its (fresh) output.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        self.next += 1;
        let out = format!("{}_{}", op_type.to_ascii_lowercase(), self.next);
        self.op_into(op_type, inputs, &out, attrs);
        out
    }

    /// Adds a node writing to `output` (e.g. a graph output's name).
    pub fn op_into(&mut self, op_type: &str, inputs: &[&str], output: &str, attrs: &[Attr]) {
        let attribute = attrs
            .iter()
            .map(|a| {
                use pb::attribute_proto::AttributeType as T;
                let mut p = pb::AttributeProto::default();
                match a {
                    Attr::Int(n, v) => {
                        p.name = (*n).to_string();
                        p.i = *v;
                        p.r#type = T::Int as i32;
                    }
                    Attr::Ints(n, v) => {
                        p.name = (*n).to_string();
                        p.ints = v.clone();
                        p.r#type = T::Ints as i32;
                    }
                    Attr::Float(n, v) => {
                        p.name = (*n).to_string();
                        p.f = *v;
                        p.r#type = T::Float as i32;
                    }
                }
                p
            })
            .collect();
        self.next += 1;
        self.graph.node.push(pb::NodeProto {
            input: inputs.iter().map(|s| (*s).to_string()).collect(),
            output: vec![output.to_string()],
            name: format!("n{}_{op_type}", self.next),
            op_type: op_type.to_string(),
            attribute,
            ..Default::default()
        });
    }

    /// The finished model file (IR 8, opset 17), with metadata entries.
    pub fn finish(self, doc: &str, metadata: &[(&str, &str)]) -> Vec<u8> {
        pb::ModelProto {
            ir_version: IR_VERSION,
            producer_name: "segstream".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.to_string(),
            graph: Some(self.graph),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            metadata_props: metadata
                .iter()
                .map(|(k, v)| pb::StringStringEntryProto {
                    key: (*k).to_string(),
                    value: (*v).to_string(),
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec()
    }
}
