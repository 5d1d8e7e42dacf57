// The sidecar's framing (docs/sidecar.md, "Framing"): `Content-Length: N\r\n\r\n` + N bytes of
// UTF-8 JSON, in both directions.

const HEADER_END = Buffer.from('\r\n\r\n', 'ascii');
const MAX_HEADER = 8 * 1024;

/** Frames one JSON body. */
export function frame(body: string): Buffer {
  const bytes = Buffer.from(body, 'utf8');
  return Buffer.concat([Buffer.from(`Content-Length: ${bytes.length}\r\n\r\n`, 'ascii'), bytes]);
}

/**
 * Incremental decoder of the sidecar's output: chunks in, parsed JSON values out. Throws on
 * anything the sidecar never writes (it writes exactly `Content-Length: N\r\n\r\n` + body).
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private need = -1; // body length being read, or -1 while reading headers

  constructor(private readonly maxBody: number) {}

  push(chunk: Buffer): unknown[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: unknown[] = [];
    for (;;) {
      if (this.need < 0) {
        const buf = this.joined();
        const end = buf.indexOf(HEADER_END);
        if (end < 0) {
          if (buf.length > MAX_HEADER) throw new Error('header block longer than 8 KiB');
          return out;
        }
        let length = -1;
        for (const line of buf.subarray(0, end).toString('latin1').split(/\r?\n/)) {
          if (line === '') continue;
          const m = /^content-length:\s*(\d+)\s*$/i.exec(line);
          if (m) length = Number(m[1]);
          else if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+:/.test(line)) throw new Error(`bad header line ${JSON.stringify(line)}`);
        }
        if (length < 0) throw new Error('header block without Content-Length');
        if (length > this.maxBody) throw new Error(`Content-Length ${length} above the limit ${this.maxBody}`);
        this.need = length;
        this.keep(buf.subarray(end + HEADER_END.length));
      }
      if (this.buffered < this.need) return out;
      const buf = this.joined();
      const body = buf.subarray(0, this.need);
      this.keep(buf.subarray(this.need));
      this.need = -1;
      out.push(JSON.parse(body.toString('utf8')));
    }
  }

  private joined(): Buffer {
    if (this.chunks.length !== 1) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  private keep(rest: Buffer): void {
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
  }
}
