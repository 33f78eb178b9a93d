//! The markdown API reference (`docs/api.md`) is generated from the `.proto` comments, by the
//! renderer below, from the same descriptor set the reflection service serves. The test fails
//! when the committed file is stale; regenerate it with
//!
//! ```sh
//! KASUHARA_UPDATE_API_DOC=1 cargo test --test integration api_doc
//! ```

use std::fmt::Write as _;
use std::path::Path;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet, SourceCodeInfo,
};

const DOC: &str = "docs/api.md";
const PACKAGE: &str = "kasuhara.v1";

// Paths into a FileDescriptorProto, as descriptor.proto numbers its fields; source code info
// locates comments by them.
const FILE_MESSAGES: i32 = 4;
const FILE_ENUMS: i32 = 5;
const FILE_SERVICES: i32 = 6;
const MESSAGE_FIELDS: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUMS: i32 = 4;
const ENUM_VALUES: i32 = 2;
const SERVICE_METHODS: i32 = 2;

/// `docs/api.md` is what the renderer makes of the current `.proto` files.
#[test]
fn api_doc_is_current() {
    let set = FileDescriptorSet::decode(kasuhara_guard::pb::FILE_DESCRIPTOR_SET)
        .expect("the build's descriptor set decodes");
    let rendered = render(&set);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    if std::env::var_os("KASUHARA_UPDATE_API_DOC").is_some() {
        std::fs::write(&path, &rendered).expect("write docs/api.md");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "help: {DOC} is stale; regenerate it with\n  \
         KASUHARA_UPDATE_API_DOC=1 cargo test --test integration api_doc"
    );
}

/// The reference does document what the protos say (guards the renderer itself).
#[test]
fn api_doc_covers_every_rpc_and_comment() {
    let set = FileDescriptorSet::decode(kasuhara_guard::pb::FILE_DESCRIPTOR_SET).expect("decode");
    let doc = render(&set);
    for file in own_files(&set) {
        for service in &file.service {
            for method in &service.method {
                let heading = format!("### {}.{}", service.name(), method.name());
                assert!(doc.contains(&heading), "help: missing {heading}");
            }
        }
        for message in &file.message_type {
            assert!(doc.contains(&format!("### {}", message.name())), "help: {}", message.name());
        }
    }
    assert!(doc.contains("Screens one conversation as it happens"), "help: rpc comments");
    assert!(doc.contains("at most 4096 bytes"), "help: field comments");
}

fn own_files(set: &FileDescriptorSet) -> impl Iterator<Item = &FileDescriptorProto> {
    set.file.iter().filter(|f| f.package() == PACKAGE)
}

/// The comment attached to the element at `path`, trimmed, or "".
fn comment(info: Option<&SourceCodeInfo>, path: &[i32]) -> String {
    let Some(location) = info.and_then(|i| i.location.iter().find(|l| l.path == path)) else {
        return String::new();
    };
    let text = location.leading_comments.as_deref().unwrap_or_default();
    text.lines().map(str::trim).collect::<Vec<_>>().join("\n").trim().to_owned()
}

/// A comment as one table cell: paragraphs joined, pipes escaped.
fn cell(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("<br><br>")
        .replace('|', "\\|")
}

/// A markdown link to a type of this package, or the type's name in code.
fn type_link(type_name: &str) -> String {
    match type_name.strip_prefix(&format!(".{PACKAGE}.")) {
        Some(local) => format!("[{local}](#{})", local.to_lowercase().replace('.', "")),
        None => format!("`{}`", type_name.trim_start_matches('.')),
    }
}

fn field_type(field: &FieldDescriptorProto, map_entries: &[(String, String)]) -> String {
    let base = match field.r#type() {
        Type::Message | Type::Enum => {
            if let Some((_, map)) = map_entries.iter().find(|(name, _)| name == field.type_name()) {
                return map.clone();
            }
            type_link(field.type_name())
        }
        scalar => format!("`{}`", scalar.as_str_name().trim_start_matches("TYPE_").to_lowercase()),
    };
    if field.label() == Label::Repeated { format!("repeated {base}") } else { base }
}

fn render(set: &FileDescriptorSet) -> String {
    let mut out = String::new();
    let files: Vec<&FileDescriptorProto> = own_files(set).collect();
    let _ = writeln!(out, "# API reference: `{PACKAGE}`\n");
    let _ = writeln!(
        out,
        "<!-- Generated from proto/kasuhara/v1/*.proto by tests/api_doc.rs; do not edit.\n     \
         Regenerate: KASUHARA_UPDATE_API_DOC=1 cargo test --test integration api_doc -->\n"
    );
    let _ = writeln!(
        out,
        "Files: {}. Every server also serves `grpc.health.v1.Health` and \
         `grpc.reflection.v1.ServerReflection`.\n",
        files.iter().map(|f| format!("`{}`", f.name())).collect::<Vec<_>>().join(", ")
    );

    let _ = writeln!(out, "## Services\n");
    for file in &files {
        let info = file.source_code_info.as_ref();
        for (s, service) in file.service.iter().enumerate() {
            let s = s as i32;
            let _ = writeln!(out, "### {}\n", service.name());
            let _ = writeln!(out, "{}\n", comment(info, &[FILE_SERVICES, s]));
            for (m, method) in service.method.iter().enumerate() {
                let stream = |on: bool| if on { "stream " } else { "" };
                let _ = writeln!(out, "#### {}.{}\n", service.name(), method.name());
                let _ = writeln!(
                    out,
                    "`rpc {}({}{}) returns ({}{})`: request {}, response {}\n",
                    method.name(),
                    stream(method.client_streaming()),
                    method.input_type().trim_start_matches(&format!(".{PACKAGE}.")),
                    stream(method.server_streaming()),
                    method.output_type().trim_start_matches(&format!(".{PACKAGE}.")),
                    type_link(method.input_type()),
                    type_link(method.output_type()),
                );
                let _ = writeln!(
                    out,
                    "{}\n",
                    comment(info, &[FILE_SERVICES, s, SERVICE_METHODS, m as i32])
                );
            }
        }
    }

    let _ = writeln!(out, "## Messages\n");
    for file in &files {
        let info = file.source_code_info.as_ref();
        for (i, message) in file.message_type.iter().enumerate() {
            render_message(&mut out, info, message, "", &[FILE_MESSAGES, i as i32]);
        }
    }

    let _ = writeln!(out, "## Enums\n");
    for file in &files {
        let info = file.source_code_info.as_ref();
        for (i, e) in file.enum_type.iter().enumerate() {
            render_enum(&mut out, info, e, "", &[FILE_ENUMS, i as i32]);
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn render_message(
    out: &mut String,
    info: Option<&SourceCodeInfo>,
    message: &DescriptorProto,
    prefix: &str,
    path: &[i32],
) {
    let name = format!("{prefix}{}", message.name());
    // Map fields are nested *Entry messages; show them as map<K, V> instead.
    let map_entries: Vec<(String, String)> = message
        .nested_type
        .iter()
        .filter(|n| n.options.as_ref().is_some_and(|o| o.map_entry()))
        .map(|n| {
            let full = format!(".{PACKAGE}.{name}.{}", n.name());
            let key = field_type(&n.field[0], &[]);
            let value = field_type(&n.field[1], &[]);
            (full, format!("map<{key}, {value}>"))
        })
        .collect();
    let _ = writeln!(out, "### {name}\n");
    let _ = writeln!(out, "{}\n", comment(info, path));
    if !message.field.is_empty() {
        let _ = writeln!(out, "| field | type | no. | description |\n|---|---|---|---|");
        for (f, field) in message.field.iter().enumerate() {
            let mut field_path = path.to_vec();
            field_path.extend([MESSAGE_FIELDS, f as i32]);
            let oneof = field
                .oneof_index
                .filter(|_| !field.proto3_optional())
                .and_then(|i| message.oneof_decl.get(i as usize))
                .map(|o| format!(" (oneof `{}`)", o.name()))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| `{}`{oneof} | {} | {} | {} |",
                field.name(),
                field_type(field, &map_entries),
                field.number(),
                cell(&comment(info, &field_path)),
            );
        }
        out.push('\n');
    }
    for (n, nested) in message.nested_type.iter().enumerate() {
        if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        let mut nested_path = path.to_vec();
        nested_path.extend([MESSAGE_NESTED, n as i32]);
        render_message(out, info, nested, &format!("{name}."), &nested_path);
    }
    for (e, nested) in message.enum_type.iter().enumerate() {
        let mut enum_path = path.to_vec();
        enum_path.extend([MESSAGE_ENUMS, e as i32]);
        render_enum(out, info, nested, &format!("{name}."), &enum_path);
    }
}

fn render_enum(
    out: &mut String,
    info: Option<&SourceCodeInfo>,
    e: &EnumDescriptorProto,
    prefix: &str,
    path: &[i32],
) {
    let _ = writeln!(out, "### {prefix}{}\n", e.name());
    let _ = writeln!(out, "{}\n", comment(info, path));
    let _ = writeln!(out, "| value | no. | description |\n|---|---|---|");
    for (v, value) in e.value.iter().enumerate() {
        let mut value_path = path.to_vec();
        value_path.extend([ENUM_VALUES, v as i32]);
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            value.name(),
            value.number(),
            cell(&comment(info, &value_path))
        );
    }
    out.push('\n');
}
