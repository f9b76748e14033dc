package temporalserver

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"go.temporal.io/server/common/log"
	"go.temporal.io/server/common/log/tag"
)

// slogBridge hands the server's log lines to slog. The server is chatty at info level (every shard, ring and
// queue change), so only warnings and errors get through: those are the lines an operator acts on.
// It deliberately does not implement log.SLogWrapper, which would let server components bypass the level floor.
type slogBridge struct {
	log *slog.Logger
	// muted is set when the server stops: its services then complain about each other going away, which is no news.
	muted atomic.Bool
}

var _ log.Logger = (*slogBridge)(nil)

const minServerLogLevel = slog.LevelWarn

// nexusWithoutHTTP is the start of the warning logged at every start because the frontend's HTTP API is off on purpose:
// vmha uses no Nexus endpoints and has no reason to open another port.
const nexusWithoutHTTP = "HTTP API port has not been set."

func (b *slogBridge) Debug(msg string, tags ...tag.Tag) { b.emit(slog.LevelDebug, msg, tags) }
func (b *slogBridge) Info(msg string, tags ...tag.Tag)  { b.emit(slog.LevelInfo, msg, tags) }
func (b *slogBridge) Warn(msg string, tags ...tag.Tag)  { b.emit(slog.LevelWarn, msg, tags) }
func (b *slogBridge) Error(msg string, tags ...tag.Tag) { b.emit(slog.LevelError, msg, tags) }

// DPanic and Panic behave as with the server's own (zap, production) logger.
func (b *slogBridge) DPanic(msg string, tags ...tag.Tag) { b.emit(slog.LevelError, msg, tags) }
func (b *slogBridge) Panic(msg string, tags ...tag.Tag) {
	b.emit(slog.LevelError, msg, tags)
	panic(msg)
}

// Fatal panics where the server's own logger would exit: the server's code after a Fatal assumes it never returns
// (a failed listen would go on with a nil listener), and a panic during Start can be turned into an error there.
func (b *slogBridge) Fatal(msg string, tags ...tag.Tag) {
	b.emit(slog.LevelError, msg, tags)
	var text strings.Builder
	text.WriteString(msg)
	for _, t := range tags {
		fmt.Fprintf(&text, " %s=%v", t.Key(), t.Value())
	}
	panic(fatalPanic{msg: text.String()})
}

func (b *slogBridge) emit(level slog.Level, msg string, tags []tag.Tag) {
	ctx := context.Background()
	if level < minServerLogLevel || b.muted.Load() || strings.HasPrefix(msg, nexusWithoutHTTP) || !b.log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, len(tags))
	for i, t := range tags {
		attrs[i] = slog.Any(t.Key(), t.Value())
	}
	b.log.LogAttrs(ctx, level, msg, attrs...)
}
