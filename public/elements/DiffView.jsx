// A finished job's diff, one collapsible section per file. Props are plain data from
// assistant/web/cards.py:diff_view_props; every string is rendered as React text, never as HTML.
import { useState } from "react";
import { ChevronDown, ChevronRight } from "lucide-react";

const ADDED = { background: "rgba(46, 160, 67, 0.18)" };
const REMOVED = { background: "rgba(248, 81, 73, 0.18)" };
const HUNK = { background: "rgba(56, 139, 253, 0.12)", color: "hsl(var(--muted-foreground))" };
const NOTE = { color: "hsl(var(--muted-foreground))", fontStyle: "italic" };

const STATUS_COLORS = {
  added: "rgb(46, 160, 67)",
  deleted: "rgb(218, 54, 51)",
  renamed: "rgb(56, 139, 253)",
  copied: "rgb(56, 139, 253)",
};

function lineKind(line) {
  if (line.startsWith("@@")) return "hunk";
  if (line.startsWith("+")) return "add";
  if (line.startsWith("-")) return "del";
  if (line.startsWith("\\")) return "note";
  return "ctx";
}

const KIND_STYLES = { hunk: HUNK, add: ADDED, del: REMOVED, note: NOTE, ctx: {} };

function text(value) {
  return typeof value === "string" ? value : "";
}

function count(value) {
  return Number.isFinite(value) ? value : 0;
}

function FileSection({ file }) {
  const [open, setOpen] = useState(Boolean(file.open));
  const lines = Array.isArray(file.lines) ? file.lines.filter((l) => typeof l === "string") : [];
  const hidden = count(file.hidden_lines);
  const status = file.binary ? "binary" : text(file.status) || "modified";
  const path = text(file.path);
  const oldPath = text(file.old_path);
  const Icon = open ? ChevronDown : ChevronRight;
  return (
    <div
      data-testid="diff-file"
      data-path={path}
      data-open={open ? "true" : "false"}
      style={{ border: "1px solid hsl(var(--border))", borderRadius: 6, marginBottom: 8, overflow: "hidden" }}
    >
      <button
        type="button"
        aria-expanded={open}
        onClick={() => setOpen(!open)}
        style={{
          display: "flex", alignItems: "center", gap: 8, width: "100%", padding: "6px 10px",
          background: "hsl(var(--muted) / 0.5)", border: "none", cursor: "pointer", textAlign: "left",
          color: "inherit", font: "inherit",
        }}
      >
        <Icon size={16} style={{ flexShrink: 0 }} />
        <span
          data-testid="diff-status"
          style={{
            fontSize: 12, padding: "0 6px", borderRadius: 4, flexShrink: 0,
            border: `1px solid ${STATUS_COLORS[status] || "hsl(var(--border))"}`,
            color: STATUS_COLORS[status] || "inherit",
          }}
        >
          {status}
        </span>
        <span style={{ fontFamily: "var(--font-mono, monospace)", fontSize: 13, overflowWrap: "anywhere", flexGrow: 1 }}>
          {oldPath ? `${oldPath} → ${path}` : path}
        </span>
        {!(file.binary && lines.length === 0) && (
          <span data-testid="diff-counts" style={{ fontFamily: "var(--font-mono, monospace)", fontSize: 12, flexShrink: 0 }}>
            <span style={{ color: "rgb(46, 160, 67)" }}>+{count(file.added)}</span>{" "}
            <span style={{ color: "rgb(218, 54, 51)" }}>−{count(file.removed)}</span>
          </span>
        )}
      </button>
      {open && (
        <div data-testid="diff-body">
          <div style={{ overflowX: "auto", maxHeight: 520, overflowY: "auto" }}>
            {file.binary && lines.length === 0 && (
              <div style={{ ...NOTE, padding: "6px 10px" }}>Binary file, contents not shown.</div>
            )}
            {!file.binary && lines.length === 0 && (
              <div style={{ ...NOTE, padding: "6px 10px" }}>No content changes.</div>
            )}
            {lines.length > 0 && (
              <pre style={{ margin: 0, padding: "4px 0", fontFamily: "var(--font-mono, monospace)", fontSize: 12.5, lineHeight: 1.5 }}>
                {lines.map((line, i) => {
                  const kind = lineKind(line);
                  return (
                    <div key={i} data-kind={kind} style={{ ...KIND_STYLES[kind], padding: "0 10px", minWidth: "max-content" }}>
                      {line || " "}
                    </div>
                  );
                })}
              </pre>
            )}
          </div>
          {hidden > 0 && (
            <div data-testid="diff-truncated" style={{ ...NOTE, padding: "6px 10px", borderTop: "1px solid hsl(var(--border))" }}>
              … {hidden} more line{hidden === 1 ? "" : "s"} not shown; download the patch for all of them.
            </div>
          )}
        </div>
      )}
    </div>
  );
}

export default function DiffView() {
  const files = Array.isArray(props.files) ? props.files.filter((f) => f && typeof f === "object") : [];
  const hiddenFiles = count(props.hidden_files);
  return (
    <div data-testid="diff-view" style={{ width: "100%", marginTop: 4 }}>
      {files.map((file, i) => (
        <FileSection key={`${i}:${text(file.path)}`} file={file} />
      ))}
      {hiddenFiles > 0 && (
        <div style={{ ...NOTE, fontSize: 13 }}>
          … {hiddenFiles} more file{hiddenFiles === 1 ? "" : "s"} not shown; download the patch for all of them.
        </div>
      )}
    </div>
  );
}
