//! Perfetto's protobuf trace (`perfetto.protos.Trace`, a stream of
//! `TracePacket`s, protos/perfetto/trace/perfetto_trace.proto), as
//! ui.perfetto.dev and trace_processor read it.
//!
//! One packet sequence: the first packet clears its incremental state and
//! interns the functions' names (`InternedData.event_names`, iid =
//! function_id + 1; a function missing from the session's table is interned
//! where it is first seen, as `function#<id>`). Each process gets a
//! `TrackDescriptor` with a `ProcessDescriptor` (the command), each thread
//! one with a `ThreadDescriptor` (its name), before its events. Each call is
//! a `TYPE_SLICE_BEGIN` track event on its thread's track, carrying the
//! captured arguments as debug annotations (by parameter name; a captured
//! string as `string_value`, an integer as `int_value`; `ret`; `flags` when
//! non-zero), and a `TYPE_SLICE_END` at its end. Timestamps are Unix epoch
//! ns on the default trace clock (the file carries no clock snapshot; the
//! UI shows times from the trace's start).
//!
//! The messages are declared here with the published field numbers (only
//! the fields written); packets stream out as calls open and close.

use std::io::Write;

use anyhow::Result;
use arrow_array::RecordBatch;
use prost::Message;
use rustc_hash::FxHashSet;

use super::columns::{AnnotationValue, CallColumns, CallRow};
use super::stack::{CallSink, Frame, Walked, walk};
use super::{ExportMeta, function_name, thread_name, write_error};

/// The one packet sequence's id.
const SEQUENCE_ID: u32 = 1;
/// `TracePacket.SequenceFlags.SEQ_INCREMENTAL_STATE_CLEARED`.
const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
/// `TracePacket.SequenceFlags.SEQ_NEEDS_INCREMENTAL_STATE`.
const SEQ_NEEDS_INCREMENTAL_STATE: u32 = 2;
/// `TrackEvent.Type.TYPE_SLICE_BEGIN`.
const TYPE_SLICE_BEGIN: i32 = 1;
/// `TrackEvent.Type.TYPE_SLICE_END`.
const TYPE_SLICE_END: i32 = 2;
/// The field number of `Trace.packet` as a length-delimited key.
const TRACE_PACKET_KEY: u8 = (1 << 3) | 2;

/// `perfetto.protos.TracePacket` (`track_event` and `track_descriptor` are
/// members of its `data` oneof: at most one is set).
#[derive(Clone, PartialEq, Message)]
struct TracePacket {
    #[prost(uint64, optional, tag = "8")]
    timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    trusted_packet_sequence_id: Option<u32>,
    #[prost(message, optional, tag = "11")]
    track_event: Option<TrackEvent>,
    #[prost(message, optional, tag = "12")]
    interned_data: Option<InternedData>,
    #[prost(uint32, optional, tag = "13")]
    sequence_flags: Option<u32>,
    #[prost(message, optional, tag = "60")]
    track_descriptor: Option<TrackDescriptor>,
}

/// `perfetto.protos.TrackDescriptor`.
#[derive(Clone, PartialEq, Message)]
struct TrackDescriptor {
    #[prost(uint64, optional, tag = "1")]
    uuid: Option<u64>,
    #[prost(message, optional, tag = "3")]
    process: Option<ProcessDescriptor>,
    #[prost(message, optional, tag = "4")]
    thread: Option<ThreadDescriptor>,
}

/// `perfetto.protos.ProcessDescriptor`.
#[derive(Clone, PartialEq, Message)]
struct ProcessDescriptor {
    #[prost(int32, optional, tag = "1")]
    pid: Option<i32>,
    #[prost(string, repeated, tag = "2")]
    cmdline: Vec<String>,
    #[prost(string, optional, tag = "6")]
    process_name: Option<String>,
}

/// `perfetto.protos.ThreadDescriptor`.
#[derive(Clone, PartialEq, Message)]
struct ThreadDescriptor {
    #[prost(int32, optional, tag = "1")]
    pid: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    tid: Option<i32>,
    #[prost(string, optional, tag = "5")]
    thread_name: Option<String>,
}

/// `perfetto.protos.TrackEvent`.
#[derive(Clone, PartialEq, Message)]
struct TrackEvent {
    #[prost(message, repeated, tag = "4")]
    debug_annotations: Vec<DebugAnnotation>,
    #[prost(int32, optional, tag = "9")]
    r#type: Option<i32>,
    #[prost(uint64, optional, tag = "10")]
    name_iid: Option<u64>,
    #[prost(uint64, optional, tag = "11")]
    track_uuid: Option<u64>,
}

/// `perfetto.protos.DebugAnnotation` (`int_value` and `string_value` are
/// members of its `value` oneof).
#[derive(Clone, PartialEq, Message)]
struct DebugAnnotation {
    #[prost(int64, optional, tag = "4")]
    int_value: Option<i64>,
    #[prost(string, optional, tag = "6")]
    string_value: Option<String>,
    #[prost(string, optional, tag = "10")]
    name: Option<String>,
}

/// `perfetto.protos.InternedData`.
#[derive(Clone, PartialEq, Message)]
struct InternedData {
    #[prost(message, repeated, tag = "2")]
    event_names: Vec<EventName>,
}

/// `perfetto.protos.EventName`.
#[derive(Clone, PartialEq, Message)]
struct EventName {
    #[prost(uint64, optional, tag = "1")]
    iid: Option<u64>,
    #[prost(string, optional, tag = "2")]
    name: Option<String>,
}

/// Writes the Perfetto trace of `batches` to `out`.
pub(super) fn write(
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    meta: &ExportMeta,
    out: &mut dyn Write,
) -> Result<Walked> {
    let mut sink = PerfettoSink {
        meta,
        out,
        buf: Vec::with_capacity(256),
        interned: FxHashSet::default(),
        pids: FxHashSet::default(),
        track: 0,
    };
    let mut ids: Vec<u32> = meta.functions.keys().copied().collect();
    ids.sort_unstable();
    let names = ids
        .iter()
        .map(|id| {
            sink.interned.insert(*id);
            event_name(meta, *id)
        })
        .collect();
    sink.packet(&TracePacket {
        sequence_flags: Some(SEQ_INCREMENTAL_STATE_CLEARED),
        interned_data: Some(InternedData { event_names: names }),
        ..packet()
    })?;
    walk(batches, meta, &mut sink)
}

/// A packet of the sequence, nothing else set.
fn packet() -> TracePacket {
    TracePacket {
        trusted_packet_sequence_id: Some(SEQUENCE_ID),
        ..TracePacket::default()
    }
}

/// The interned name of `function_id`.
fn event_name(meta: &ExportMeta, function_id: u32) -> EventName {
    EventName {
        iid: Some(u64::from(function_id) + 1),
        name: Some(function_name(meta, function_id).into_owned()),
    }
}

/// A process track's uuid.
fn process_uuid(pid: u32) -> u64 {
    (1 << 62) | u64::from(pid)
}

/// A thread track's uuid.
fn thread_uuid(pid: u32, tid: u32) -> u64 {
    (1 << 63) | (u64::from(pid) << 32) | u64::from(tid)
}

struct PerfettoSink<'a, 'm> {
    meta: &'a ExportMeta<'m>,
    out: &'a mut dyn Write,
    /// One encoded packet, reused.
    buf: Vec<u8>,
    /// Function ids whose name is interned.
    interned: FxHashSet<u32>,
    /// Processes whose track was written.
    pids: FxHashSet<u32>,
    /// The current thread's track uuid.
    track: u64,
}

impl PerfettoSink<'_, '_> {
    /// Writes `packet` as one `Trace.packet` field.
    fn packet(&mut self, packet: &TracePacket) -> Result<()> {
        self.buf.clear();
        self.buf.push(TRACE_PACKET_KEY);
        packet
            .encode_length_delimited(&mut self.buf)
            .map_err(|e| anyhow::anyhow!("cannot encode a trace packet: {e}"))?;
        self.out.write_all(&self.buf).map_err(write_error)
    }
}

impl CallSink for PerfettoSink<'_, '_> {
    fn thread_start(&mut self, pid: u32, tid: u32) -> Result<()> {
        if self.pids.insert(pid) {
            self.packet(&TracePacket {
                track_descriptor: Some(TrackDescriptor {
                    uuid: Some(process_uuid(pid)),
                    process: Some(ProcessDescriptor {
                        pid: Some(pid as i32),
                        cmdline: vec![self.meta.command.to_owned()],
                        process_name: Some(self.meta.command.to_owned()),
                    }),
                    thread: None,
                }),
                ..packet()
            })?;
        }
        self.track = thread_uuid(pid, tid);
        self.packet(&TracePacket {
            track_descriptor: Some(TrackDescriptor {
                uuid: Some(self.track),
                process: None,
                thread: Some(ThreadDescriptor {
                    pid: Some(pid as i32),
                    tid: Some(tid as i32),
                    thread_name: Some(thread_name(self.meta, tid)),
                }),
            }),
            ..packet()
        })
    }

    fn open(
        &mut self,
        frame: &Frame,
        _parent: Option<&Frame>,
        columns: &CallColumns,
        i: usize,
        row: &CallRow,
    ) -> Result<()> {
        let interned_data = self.interned.insert(row.function_id).then(|| InternedData {
            event_names: vec![event_name(self.meta, row.function_id)],
        });
        let debug_annotations = columns
            .annotations(i, self.meta.functions.get(&row.function_id))
            .into_iter()
            .map(|a| {
                let (int_value, string_value) = match a.value {
                    AnnotationValue::Int(v) => (Some(v), None),
                    AnnotationValue::Str(s) => (None, Some(s)),
                };
                DebugAnnotation {
                    int_value,
                    string_value,
                    name: Some(a.name),
                }
            })
            .collect();
        self.packet(&TracePacket {
            timestamp: Some(frame.start_ns.max(0) as u64),
            sequence_flags: Some(SEQ_NEEDS_INCREMENTAL_STATE),
            interned_data,
            track_event: Some(TrackEvent {
                debug_annotations,
                r#type: Some(TYPE_SLICE_BEGIN),
                name_iid: Some(u64::from(row.function_id) + 1),
                track_uuid: Some(self.track),
            }),
            ..packet()
        })
    }

    fn close(&mut self, frame: &Frame) -> Result<()> {
        self.packet(&TracePacket {
            timestamp: Some(frame.end_ns.max(0) as u64),
            sequence_flags: Some(SEQ_NEEDS_INCREMENTAL_STATE),
            track_event: Some(TrackEvent {
                r#type: Some(TYPE_SLICE_END),
                track_uuid: Some(self.track),
                ..TrackEvent::default()
            }),
            ..packet()
        })
    }

    fn thread_end(&mut self) -> Result<()> {
        Ok(())
    }
}
