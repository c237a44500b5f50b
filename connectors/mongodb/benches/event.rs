//! The connector's own cost per change event, in isolation: the event's BSON bytes as the
//! driver receives them in a `getMore` reply, routed by a channel template and shaped into the
//! normalized JSON payload of a `Publish`, as the JSON text the log stores (what the connector
//! hands the server). Variants: an update, the raw and canonical payloads, pipeline-field
//! routing, a snapshot document; and, for scale, decoding to a `Document` (which the connector
//! skips).
//!
//! Run: `cargo bench -p tidings-connector-mongodb --bench event`. Goal: ≤ 10 µs per event.

use bson::{doc, oid::ObjectId, Bson, DateTime, Decimal128, Document, RawDocumentBuf, Timestamp};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use tidings_connector_mongodb::config::{JsonMode, OnPoison, Payload};
use tidings_connector_mongodb::router::Router;
use tidings_connectors_core::route::ChannelTemplate;

/// A resume token the size MongoDB 7 sends for a replica-set event.
const TOKEN: &str = "8265A1B2C3000000012B042C0100296E5A1004A1B2C3D4E5F60718293A4B5C6D7E8F46645F6964006465A1B2C3D4E5F60718293A4B0004";

/// An insert event as a change stream delivers it with `fullDocument: "updateLookup"`: an
/// order of about 400 bytes of BSON with the usual types.
fn insert_event() -> Document {
    let id = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
    doc! {
        "_id": {"_data": TOKEN},
        "operationType": "insert",
        "clusterTime": Timestamp { time: 1_700_000_000, increment: 7 },
        "wallTime": DateTime::from_millis(1_700_000_000_123),
        "fullDocument": {
            "_id": id,
            "storeId": "store-42",
            "customer": {"name": "Ada Lovelace", "email": "ada@example.com", "tier": "gold"},
            "status": "paid",
            "total": Decimal128::from_bytes([0x0c, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3e, 0x30]),
            "items": [
                {"sku": "A-1", "qty": 2, "price": 9.5},
                {"sku": "B-7", "qty": 1, "price": 24.0},
            ],
            "createdAt": DateTime::from_millis(1_700_000_000_000),
            "version": 3i64,
        },
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": id},
    }
}

/// An update event with its delta and the looked-up document.
fn update_event() -> Document {
    let mut e = insert_event();
    e.insert("operationType", "update");
    e.insert(
        "updateDescription",
        doc! {"updatedFields": {"status": "shipped", "version": 4i64}, "removedFields": [], "truncatedArrays": []},
    );
    e
}

fn router(payload: Payload, template: Option<&str>) -> Router {
    Router {
        connector: "shop".into(),
        template: template.map(|t| ChannelTemplate::parse(t).unwrap()),
        payload,
        json: JsonMode::Relaxed,
        control_channel: "mongodb:shop".into(),
        dead_letter: "dead:shop".into(),
        on_poison: OnPoison::DeadLetter,
    }
}

fn bytes(d: &Document) -> Vec<u8> {
    let mut out = Vec::new();
    d.to_writer(&mut out).unwrap();
    out
}

fn per_event(c: &mut Criterion) {
    let insert = bytes(&insert_event());
    let update = bytes(&update_event());
    let mut fields = insert_event();
    fields.insert("_channel", "store:store-42");
    fields.insert("_name", "order.created");
    let fields = bytes(&fields);
    let normalized = router(Payload::Normalized, Some("store:{fullDocument.storeId}"));
    let raw = router(Payload::Raw, Some("store:{fullDocument.storeId}"));
    let by_fields = router(Payload::Normalized, None);
    let mut canonical = router(Payload::Normalized, Some("store:{fullDocument.storeId}"));
    canonical.json = JsonMode::Canonical;

    let mut g = c.benchmark_group("mongodb_event");
    g.throughput(Throughput::Elements(1));
    // The whole path the connector owns, per event: the event's bytes (copied out of the reply,
    // as the driver hands a `RawDocumentBuf`) → routed Publish with its JSON payload.
    let full = |name: &str, r: &Router, event: &[u8], g: &mut criterion::BenchmarkGroup<_>| {
        g.bench_function(name, |b| {
            b.iter(|| {
                let d = RawDocumentBuf::from_bytes(black_box(event).to_vec()).unwrap();
                let token = Bson::try_from(d.get("_id").unwrap().unwrap()).unwrap();
                black_box(r.change_raw(&d, &token).unwrap())
            })
        });
    };
    full("insert_template_normalized", &normalized, &insert, &mut g);
    full("update_template_normalized", &normalized, &update, &mut g);
    full("insert_template_raw", &raw, &insert, &mut g);
    full("insert_fields_normalized", &by_fields, &fields, &mut g);
    full("insert_template_canonical", &canonical, &insert, &mut g);
    // A snapshot document (the order alone), as `find` returns it.
    let order = bytes(insert_event().get_document("fullDocument").unwrap());
    let resume = Bson::Document(doc! {"_data": TOKEN});
    g.bench_function("snapshot_document", |b| {
        b.iter(|| {
            let d = RawDocumentBuf::from_bytes(black_box(&order).to_vec()).unwrap();
            black_box(
                normalized
                    .snapshot_raw("shop", "orders", &d, &resume)
                    .unwrap(),
            )
        })
    });
    // For scale: decoding the same bytes to a `Document`, which the connector does not do.
    g.bench_function("for_scale_decode_to_document", |b| {
        b.iter(|| black_box(bson::from_slice::<Document>(black_box(&insert)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, per_event);
criterion_main!(benches);
